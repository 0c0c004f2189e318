"""Ray sessions: a local one, and the --ray-address path (training on an existing multi-node
cluster, head + worker on loopback)."""

import multiprocessing
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_retrieval_learns, free_port

from movierec import pipeline
from movierec.core.settings import RaySettings, RetrievalConfig, Settings
from movierec.data.split import DataSplit, split_ratings
from movierec.training import cluster
from movierec.training.retrieval import RetrievalResult

RAY = str(Path(sys.executable).parent / "ray")


def _short_tmp() -> str:
    """A temp dir under /tmp: Ray's socket paths below it must stay within 107 bytes."""
    return tempfile.mkdtemp(prefix="mr-ray-", dir="/tmp")


def _cluster_cpus(address: str) -> float:
    out = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True,
                         timeout=60).stdout
    for line in out.splitlines():  # e.g. " 0.0/2.0 CPU"
        if line.strip().endswith(" CPU") and "/" in line:
            return float(line.split("/")[1].split()[0])
    return 0.0


@pytest.fixture()
def two_node_cluster(monkeypatch):
    """`ray start --head` plus a second node joining it, each with one CPU.

    Ray 2.60 clusters require a token (``ray start`` writes ~/.ray/auth_token); every client,
    this test's driver included, must be told to present it with RAY_AUTH_MODE=token.
    """
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    # A token of this test's own: without one (no ~/.ray/auth_token on a fresh machine) `ray start` refuses.
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = free_port()
    address = f"127.0.0.1:{port}"
    # `ray start` records its address in <temp dir>/ray/ray_current_cluster for later ray.init()
    # calls; in the default /tmp/ray that file would outlive the test and send the user's next
    # `ray status` to a dead cluster.
    ray_tmp = _short_tmp()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    procs = [head]
    try:
        deadline = time.monotonic() + 60
        while _cluster_cpus(address) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        procs.append(subprocess.Popen([RAY, "start", f"--address={address}", *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        while _cluster_cpus(address) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert _cluster_cpus(address) == 2, "the two-node Ray cluster did not come up"
        yield address
    finally:
        # Ctrl-C, the joined node first: each stops its node in about a second. The head, sent SIGTERM
        # after a training had run, outlived a 30 s wait and had to be killed.
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _train_on(address: str, enc, split, storage: str) -> RetrievalResult:
    # Two workers of one CPU each can only be placed with one on each node.
    cfg = RetrievalConfig(dim=16, hidden=32, epochs=4, workers=2, batch_size=256, patience=10,
                          history=True)  # the optional history path, on 2 workers
    settings = Settings(retrieval=cfg, ray=RaySettings(address=address, num_cpus=2))
    return pipeline.train_retrieval(DataSplit(enc, split), settings, storage)


def test_retrieval_trains_across_a_two_node_cluster(two_node_cluster, small_encoded, tmp_path):
    """The two-tower model on two Ray Train workers, one on each node, learns. The driver runs in a
    process of its own: a process that joined a token-authenticated cluster keeps presenting the
    token, and the local Ray sessions of later tests then fail."""
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(_train_on, two_node_cluster, enc, split, str(tmp_path)).result()
    assert result.ray_train and [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    users, items = result.embeddings()
    assert users.shape == (enc.n_users, 16) and items.shape == (enc.n_items, 16)
    assert_retrieval_learns(result, enc, split, epochs=4)


def test_local_session_state_api_fails_fast_despite_a_stale_cluster_file(monkeypatch):
    """Ray Train's placement-group cleaner polls the State API during training. In a local session
    every poll must fail at once with the error it skips (RayStateApiException), even when
    ray_current_cluster names a dead cluster, as any earlier `ray start` leaves it: an unset API
    address made it wait on that cluster and die with a traceback mid-training."""
    import ray

    ray_tmp = _short_tmp()
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    Path(ray_tmp, "ray").mkdir()
    Path(ray_tmp, "ray", "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")

    @ray.remote
    def state_api_error() -> str:
        from ray.util.state import get_actor
        from ray.util.state.exception import RayStateApiException

        try:
            get_actor("ff" * 16, timeout=5)
        except RayStateApiException as e:
            return type(e).__name__
        except Exception as e:  # what killed the cleaner's thread
            return f"unexpected {type(e).__name__}: {e}"
        return "no error"

    try:
        with cluster.ray_session(RaySettings(num_cpus=1)):
            assert ray.get(state_api_error.remote()) == "ServerUnavailable"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_workers_that_cannot_be_placed_fail_the_training_with_a_reason(small_encoded, tmp_path, monkeypatch):
    """More workers than CPUs made Ray Train retry the worker group's start-up for ever."""
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "3")  # read by Ray Train's controller
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    settings = Settings(retrieval=RetrievalConfig(dim=8, hidden=16, epochs=1, workers=3, batch_size=256),
                        ray=RaySettings(num_cpus=2))
    with pytest.raises(RuntimeError, match=r"could not start the retrieval training: 3 retrieval workers of 1 CPU "
                                           r"each do not fit a Ray cluster with 2 CPUs: lower retrieval.workers"):
        pipeline.train_retrieval(DataSplit(enc, split), settings, str(tmp_path))


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="Ray would find this machine's GPUs")
def test_workers_asking_for_gpus_a_cluster_lacks_fail_with_a_reason(small_encoded, tmp_path, monkeypatch):
    """The GPU path's placement, checked on CPU: the workers ask Ray for GPUs (none here)."""
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "3")
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    settings = Settings(retrieval=RetrievalConfig(dim=8, hidden=16, epochs=1, workers=1, gpus_per_worker=1,
                                                  batch_size=256), ray=RaySettings(num_cpus=2, train="always"))
    with pytest.raises(RuntimeError, match=r"1 retrieval workers of 1 GPU each do not fit a Ray cluster with 0 "
                                           r"GPUs: set retrieval.gpus_per_worker"):
        pipeline.train_retrieval(DataSplit(enc, split), settings, str(tmp_path))


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="torch would find this machine's GPUs")
def test_one_worker_asking_for_a_gpu_torch_lacks_fails_in_this_process_with_a_reason(small_encoded, tmp_path):
    """Without Ray Train (one local worker), the same settings meet torch's check, not Ray's placement."""
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    settings = Settings(retrieval=RetrievalConfig(dim=8, hidden=16, epochs=1, gpus_per_worker=1, batch_size=256))
    with pytest.raises(RuntimeError, match=r"1 GPU\(s\) asked for, but torch .* sees none .* GPU settings to 0"):
        pipeline.train_retrieval(DataSplit(enc, split), settings, str(tmp_path))


def test_a_local_session_refuses_clients_without_its_token():
    """Local sessions listened on every interface, open to anyone on the network; Ray cannot bind
    them to loopback alone, so each now requires this process's own token."""
    import ray

    with cluster.ray_session(RaySettings(num_cpus=1)):
        address = ray.get_runtime_context().gcs_address
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        outsider = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, env=env,
                                  timeout=120)
        insider = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, timeout=120)
    assert outsider.returncode != 0 and "token" in (outsider.stdout + outsider.stderr).lower()
    assert insider.returncode == 0 and "token" not in (insider.stdout + insider.stderr).lower()


def test_a_worker_stopped_inside_a_finalizer_prints_no_traceback(capfd):
    """Ray stops workers with SIGTERM; one that landed while a worker ran a weakref callback printed
    "Exception ignored ... SystemExit: 1" with a traceback into a successful flow run's output.
    The signal is sent here from inside such a callback; other unraisable errors must still print."""
    import ray

    @ray.remote
    def signalled_in_a_finalizer() -> None:
        import signal
        import weakref

        class Thing:
            pass

        def finalizer(_ref: weakref.ref) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, between bytecodes of this callback

        def broken_finalizer(_ref: weakref.ref) -> None:
            raise ValueError("a real error in a finalizer")

        thing, other = Thing(), Thing()
        refs = [weakref.ref(thing, finalizer), weakref.ref(other, broken_finalizer)]
        del thing, other
        print("finalizers ran", len(refs), file=sys.stderr, flush=True)

    with cluster.ray_session(RaySettings(num_cpus=1)):
        ray.get(signalled_in_a_finalizer.remote())
        deadline = time.monotonic() + 30
        err = ""
        while time.monotonic() < deadline and "finalizers ran" not in err:
            time.sleep(0.5)
            err += capfd.readouterr().err
    assert "finalizers ran" in err
    assert "ValueError: a real error in a finalizer" in err
    assert "SystemExit" not in err
