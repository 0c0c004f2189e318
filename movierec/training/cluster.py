"""Starting and stopping Ray the same way in every step.

A local Ray instance gets explicit CPUs and no dashboard (2-core laptops have none to spare);
``address`` joins an existing cluster instead, shipping the ``movierec`` package to its workers.
Shutdown always happens, even when training raises, so a failed step never leaves Ray running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import movierec
from movierec.core.settings import RaySettings

# The port of the head node @metaflow_ray starts (metaflow-ray 0.1.5 always uses Ray's default).
CLUSTER_HEAD_PORT = 6379
# The State API address local sessions give their workers: nothing can listen on port 0 (why: ray_session).
NO_STATE_API = "http://127.0.0.1:0"


@contextlib.contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Ray for the duration of the block: joining ``settings.address``, or a local instance with
    ``settings.num_cpus`` CPUs."""
    # Ray folds log lines that differ only in numbers into "[repeated Nx across cluster]": our
    # per-epoch lines are exactly that, and each one matters. Ray reads this when imported.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    # Ray's own INFO/WARNING chatter from workers (checkpoint notices, and state-API warnings that
    # come from running without a dashboard) buries the progress lines our steps print.
    # Ray Train also re-logs every worker print, which would show each progress line twice.
    quiet = {"logging_level": "WARNING", "logging_config": ray.LoggingConfig(log_level="ERROR")}
    env_vars = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    setup = {"worker_process_setup_hook": f"{__name__}.{quiet_exit_in_finalizers.__name__}"}
    if settings.address:
        pkg = str(Path(movierec.__file__).resolve().parent)
        ray.init(address=settings.address, runtime_env={"py_modules": [pkg], "env_vars": env_vars, **setup}, **quiet)
    else:
        # Ray Train's placement-group cleaner polls the State API, which is served by the dashboard
        # this session does not start. Left to find the API itself, it looks up the cluster in
        # /tmp/ray/ray_current_cluster, which any earlier `ray start` leaves pointing at a dead
        # cluster: its thread then dies with a "Timed out while waiting for GCS" traceback in the
        # middle of training. An address where nothing can listen (port 0) makes each poll fail at
        # once with the "State API unavailable" error the cleaner expects and skips. (It only
        # matters when a driver dies without cleaning up; this session's cluster dies with it.)
        env_vars["RAY_API_SERVER_ADDRESS"] = NO_STATE_API
        _private_to_this_process()
        ray.init(address="local", num_cpus=settings.num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": env_vars, **setup}, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


def quiet_exit_in_finalizers() -> None:
    """Run in every Ray worker of a session: drop the traceback of a SIGTERM that lands in a finalizer.

    Ray stops workers with SIGTERM, and a worker's handler raises SystemExit. When the signal
    arrives while the worker runs a weakref or ``__del__`` callback, Python cannot propagate the
    exception, so it prints "Exception ignored in ... SystemExit: 1" with a traceback; the worker
    then exits as intended. That text reached a successful run's output, where a user reads it as a
    failure. Every other unraisable exception still prints.
    """
    default = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            default(unraisable)

    sys.unraisablehook = hook


def _private_to_this_process() -> None:
    """A local session serves this process alone, but Ray 2.60's servers listen on every interface
    with no setting to change it (it even turns a node address of 127.0.0.1 into the machine's
    address): so every local session requires a token that only this process (and the Ray
    processes it starts, which inherit the environment) knows. One token per process, kept for its lifetime:
    Ray caches the token a process first used, and a later session with another would be refused.
    Ray reads its settings from the environment once, when imported; re-reading them is how Ray's
    own ``ray start`` switches token mode on after import."""
    from ray._raylet import Config

    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    if os.environ.get("RAY_AUTH_MODE") != "token":
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


def prepare_local_cluster() -> None:
    """Ready this machine for the Ray cluster a local run of RecommenderClusterFlow forms
    (``@metaflow_ray``: one ``ray start`` per node, all here). Called in the process that starts
    the run: its tasks, and the tasks the control task starts for the other nodes, inherit the
    environment.

    - One token for every node: Ray 2.60's ``ray start`` switches token authentication on and
      makes up a token of its own unless one is set, so the first node would refuse the second.
      (On Kubernetes or AWS Batch the token comes from a secret: ``deploy.ray_token_secret``.)
    - This Python first on PATH: Metaflow starts the other nodes' tasks with whatever ``python``
      PATH finds, so a run started as ``.venv/bin/python flows/...`` without an activated venv
      had them fail to import Metaflow and the control task wait for them for ten minutes."""
    if "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"
    here = str(Path(sys.executable).parent)
    if shutil.which("python") != str(Path(here) / "python"):
        os.environ["PATH"] = os.pathsep.join([here, os.environ.get("PATH", "")])


def session_dir() -> str:
    """The session folder of the Ray cluster this process is connected to (every process of the
    cluster's nodes on this machine names it on its command line)."""
    import ray

    return ray._private.worker.global_worker.node.get_session_dir_path()


def stop_session_processes(session: str, grace_s: float = 10.0) -> int:
    """Stop this machine's processes of the Ray session ``session`` (:func:`session_dir`); how many.

    ``@metaflow_ray`` starts each node with ``ray start`` and never stops it: a local run would
    leave its whole cluster running (on the port the next run's head needs), a container only
    its own node. ``ray stop`` would stop every Ray on the machine, tune_ranking's beside this step
    included; only processes naming this session's folder are stopped here."""
    import importlib

    import ray  # noqa: F401  (puts its bundled copy of psutil on the path)

    psutil = importlib.import_module("psutil")

    if not Path(session).name.startswith("session_"):  # an empty string would match every process
        raise ValueError(f"not a Ray session folder: {session!r}")
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(session in arg for arg in proc.info["cmdline"] or ()):
            mine.append(proc)
    for proc in mine:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.terminate()
    _, alive = psutil.wait_procs(mine, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    return len(mine)


def storage_path(flow: str, run_id: str, step: str, attempt: int = 0, *, datastore: str = "local",
                 root: str | None = None) -> str:
    """Where a step's Ray results go, one place per run, step and attempt (a retried step starts
    afresh): in the run's ``datastore`` when it is S3 or Google Cloud Storage (as on Kubernetes and
    Batch), below its ``root`` (default: Metaflow's configured root), which every node of a Ray
    cluster can reach (Ray Train refuses a folder of the driver's on a multi-node cluster), with
    Metaflow's S3 endpoint when one is set; else an absolute folder beside the local datastore,
    following METAFLOW_DATASTORE_SYSROOT_LOCAL when set, so isolated test runs stay isolated."""
    from metaflow import metaflow_config as mf

    if datastore in ("s3", "gs"):
        root = root or (mf.DATASTORE_SYSROOT_S3 if datastore == "s3" else mf.DATASTORE_SYSROOT_GS)
        uri = f"{root.rstrip('/')}/movierec_ray/{flow}/{run_id}/{step}/{attempt}"
        return s3_uri(uri, mf.S3_ENDPOINT_URL) if datastore == "s3" else uri
    root = os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") or os.getcwd()
    path = Path(root).resolve() / ".movierec_ray" / flow / str(run_id) / step / str(attempt)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def s3_uri(uri: str, endpoint_url: str | None) -> str:
    """``uri`` as Ray's storage (pyarrow's S3 file system) reads it: an S3-compatible endpoint
    (MinIO, a local test server) travels as the URI's ``endpoint_override`` and ``scheme``."""
    if not endpoint_url:
        return uri
    endpoint = urllib.parse.urlsplit(endpoint_url)
    return f"{uri}?{urllib.parse.urlencode({'endpoint_override': endpoint.netloc, 'scheme': endpoint.scheme})}"
