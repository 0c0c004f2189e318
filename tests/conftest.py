"""Test isolation: Metaflow and Ray write into a throw-away folder, never into the checkout.

Metaflow reads its configuration when first imported, so the environment is set here, before
any test module imports it.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

if __name__ != "conftest":  # e.g. `from tests.conftest import ...`: this module would run a second time, point
    # Metaflow at a second datastore root halfway through the session, and the flow tests would read the wrong one
    raise ImportError("import test helpers with `from conftest import ...`, never as tests.conftest")
_ROOT = tempfile.mkdtemp(prefix="movierec-tests-")
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = _ROOT
os.environ["METAFLOW_HOME"] = _ROOT
os.environ.setdefault("USERNAME", "movierec-tests")
os.environ.pop("MOVIEREC_FAIL_STEP", None)
# Whether a flow's steps run remotely (movierec.training.flowconfig.runs_remotely) reads these and the command
# line: the tests run locally whatever the shell that started them had set.
for _var in ("METAFLOW_RUNTIME_ENVIRONMENT", "METAFLOW_DECOSPECS", "METAFLOW_DEFAULT_DECOSPECS"):
    os.environ.pop(_var, None)

# Metaflow's Runner loads Metaflow's vendored copy of typing_extensions, which replaces two functions of the
# standard typing module with versions that do not know the real typing_extensions' TypeVar defaults: any
# later import of torch (it loads torch.export) then fails. Load it once, and put typing back.
_PATCHED = ("_check_generic", "_collect_parameters", "_collect_type_vars")
_TYPING = {name: getattr(typing, name, None) for name in _PATCHED}
import metaflow.runner.click_api  # noqa: E402, F401

for _name, _original in _TYPING.items():
    if _original is None:
        vars(typing).pop(_name, None)
    else:
        setattr(typing, _name, _original)

# after Metaflow's environment above: it imports movierec.data
from data_samples import (  # noqa: E402
    MOVIES_CSV,
    MOVIES_DAT,
    RATINGS_CSV,
    RATINGS_DAT,
    RB_INTER,
    RB_ITEM,
    RB_USER,
    USERS_DAT,
    _write,
)

ML100K = Path(__file__).resolve().parent.parent / "data" / "ml-100k"
FLOW = str(Path(__file__).resolve().parent.parent / "flows" / "recommender_flow.py")
BUDGET = {"retrieval_epochs": 3, "tune_samples": 2, "tune_epochs": 2, "n_trees": 20}


# The quick tier (`make test-fast`, `-m "not integration"`) leaves out every test that starts something heavy:
# a flow (even one that stops in its start step), Ray, a fresh virtual environment, a server process, worker
# processes, a browser or a database server. Modules made of such tests are named here; elsewhere a test is
# integration when it uses one of these fixtures (or their dependants: pytest lists them all in
# ``item.fixturenames``), or carries the marker itself. ``metaflow_root`` is the datastore that flow processes
# write into: a test asks for it to start the flow.
INTEGRATION_MODULES = {"test_flow", "test_cluster", "test_deploy", "test_install", "test_postgres", "test_api_fuzz"}
INTEGRATION_FIXTURES = {"runs", "metaflow_root", "light_install", "server", "postgres", "ray_trained"}


# Modules whose tests read the shared runs (``runs``: a failed run and its resume, about two minutes):
# pytest-xdist runs them in one worker (see pytest_xdist_make_scheduler) so the runs are made once; collection
# refuses a test that reads them from any other module, where another worker would make them again.
RUNS_MODULES = {"test_artifacts", "test_feedback", "test_flow", "test_install", "test_packaging"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in INTEGRATION_MODULES or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        if "runs" in item.fixturenames and item.module.__name__ not in RUNS_MODULES:
            raise pytest.UsageError(f"{item.nodeid} reads the shared runs: add {item.module.__name__} to "
                                    "conftest.RUNS_MODULES")
    # The long shares first, then the rest by their number of integration tests (a stable sort: each share keeps
    # its file order), so the quick ones fill the workers' ends instead of a long share running alone there.
    heavy = Counter(worker_share(item.nodeid) for item in items if item.get_closest_marker("integration"))
    items.sort(key=lambda item: _share_order(worker_share(item.nodeid), heavy))


# The shares that take longest (seconds in one run of 2026-12-03 with two workers on the 2-core machine: the
# shared runs ~420, test_deploy ~380, test_models ~190, test_cluster ~160, test_flowconfig ~150), longest first.
LONG_SHARES = ("runs", "test_deploy", "test_models", "test_cluster", "test_flowconfig")


def _share_order(share: str, integration: Counter) -> tuple[int, int]:
    return (LONG_SHARES.index(share) if share in LONG_SHARES else len(LONG_SHARES), -integration[share])


def worker_share(nodeid: str) -> str:
    """Which share of the suite a test belongs to when pytest-xdist runs it (`make test`: ``-n 2``);
    each share runs whole, in file order, in one worker. The modules that read the shared runs are one
    share (``RUNS_MODULES``). Every other module is a share of its own, so module-scoped servers and
    trainings start once. A test that looks for the latest run in the worker's datastore
    (``metaflow_root``, one per worker) may meet runs other shares made there before it."""
    module = Path(nodeid.split("::", 1)[0]).stem
    return "runs" if module in RUNS_MODULES else module


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` leaves it unknown
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler by module, with the modules of the shared runs as one share
    (:func:`worker_share`), handed out in collection order (heaviest first: see
    ``pytest_collection_modifyitems``) rather than xdist's by number of tests. Its own ``--dist
    loadgroup`` would group with markers, but it renames tests by a field pytest 9 no longer reads,
    so it groups nothing."""
    from xdist.scheduler import LoadScopeScheduling

    class ByShare(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_share(nodeid)

    config.option.loadscopereorder = False  # overrides --loadscope-reorder: the order is conftest's
    return ByShare(config, log)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def local_command_line(monkeypatch):
    """pytest's own arguments are no flow command: `pytest -k argo-workflows` would look like a
    deployment to ``flowconfig.runs_remotely``."""
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])


@pytest.fixture(scope="session")
def metaflow_root() -> str:
    return _ROOT


@pytest.fixture(scope="session")
def small_encoded():
    """A small synthetic data set, encoded: fast enough for model tests."""
    from movierec.data import synthetic
    from movierec.data.features import encode

    return encode(synthetic.generate(n_users=200, n_items=150, n_ratings=6000, seed=3))


def assert_retrieval_learns(result, enc, split, *, epochs: int) -> None:
    """A retrieval model trained ``epochs`` epochs on ``small_encoded`` learned: its loss fell, its
    vectors are unit rows, and it ranks held-out movies better than chance."""
    from movierec.core import metrics

    losses = [h["loss"] for h in result.history]
    assert len(losses) == epochs and losses[-1] < losses[0]
    assert all(0 < h["val_dcg"] <= 1 for h in result.history)
    users, items = result.embeddings()
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1, atol=1e-5)
    ranks = metrics.target_ranks(users, items, enc.user_idx[split.test], enc.item_idx[split.test])
    # Better than random ordering (expected top-20 share 20/150) on held-out data.
    assert metrics.categorical_accuracy(ranks, (20,))[20] > 20 / enc.n_items


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real ML-100K (fetched by `make data`, which `make test` runs first)."""
    if not (ML100K / "ml-100k.inter").exists():
        pytest.skip("ML-100K not fetched: run `make data`")
    return ML100K


# Small folders of three layouts, shared by the tests of movierec.data (sample files: tests/data_samples.py).
@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    return _write(tmp_path / "ml-tiny", {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV})


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    files = {"ratings.dat": RATINGS_DAT, "movies.dat": MOVIES_DAT.encode("latin-1"), "users.dat": USERS_DAT}
    return _write(tmp_path / "ml-1m", files)


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    files = {"ml-100k.inter": RB_INTER, "ml-100k.item": RB_ITEM, "ml-100k.user": RB_USER}
    return _write(tmp_path / "ml-100k", files)


def tiny_stages(enc, rp3beta: bool = False):
    """Briefly fitted models of both stages on the toy data (no Ray: fast), and the split. For
    implicit-only data (``enc.implicit``) there is no rating model and the ranker has no rating
    feature, as in the flow. ``rp3beta`` switches on the source that is off by default."""

    import torch

    from movierec.core.arrays import Interactions
    from movierec.core.settings import IndexSettings, RetrievalConfig, SourcesConfig
    from movierec.data.split import DataSplit, holdout, split_ratings
    from movierec.models.factorization import fit_biased_mf
    from movierec.models.index import build_index
    from movierec.models.layers import feature_tensors
    from movierec.models.rating_model import RatingModel
    from movierec.models.second_stage import Ranker, features
    from movierec.models.sources import fit_sources
    from movierec.models.torch_runtime import state_to_bytes
    from movierec.models.two_tower import TwoTower
    from movierec.training.rating_search import RankingResult
    from movierec.training.retrieval import RetrievalResult
    from movierec.training.stages import TwoStage

    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    uf, itf = feature_tensors(enc)
    torch.manual_seed(0)
    cfg = RetrievalConfig(dim=8, hidden=16)
    towers = TwoTower(enc.vocab_sizes, uf, itf, cfg.dim, cfg.hidden)
    params = {"dim": 8, "hidden": 8, "dropout": 0.0}
    ranker = RatingModel(enc.vocab_sizes, uf, itf, float(enc.rating.mean()), **params)
    train = split.train  # blended as the flow blends it, so bundles and serving carry the blend
    ranker.attach_blend(fit_biased_mf(Interactions.of(enc, train), factors=4, iterations=3), 0.5)
    retrieval = RetrievalResult(state_to_bytes(towers), cfg, enc.vocab_sizes)
    ranking = RankingResult(state_to_bytes(ranker), params, enc.vocab_sizes, 1.0)
    users, items = retrieval.embeddings()
    index = build_index(users, items, IndexSettings(n_trees=10))
    fit, val = holdout(split.train, 0.1, 0)
    sources = fit_sources(Interactions.of(enc, fit), Interactions.of(enc, val),
                          SourcesConfig(ease_lambdas=(10.0,), als_factors=(8,), als_regularization=(0.1,),
                                        als_alpha=(1.0,), als_iterations=5, rp3beta=rp3beta, rp3beta_alphas=(1.0,),
                                        rp3beta_betas=(0.25,)), seed=0)
    weights = {"retrieval": 1.0, "ease": 0.5, "als": 0.2, "rp3beta": 0.4, "rating": 0.3, "popularity": 0.1}
    names = features(sources.final, rated=not enc.implicit)  # the sources fitted, as the flow's ranker has them
    second = Ranker(features=names, mean=np.zeros(len(names), np.float32), scale=np.ones(len(names), np.float32),
                    weights=np.array([weights[f] for f in names], np.float32), candidates=20, val_ndcg=0.0)
    return DataSplit(enc, split), TwoStage(retrieval, index, sources, None if enc.implicit else ranking, second)


@pytest.fixture(scope="session")
def tiny_models(small_encoded):
    """(data split, both stages) of briefly fitted models on the toy data."""
    return tiny_stages(small_encoded)


def _tiny_bundle(tiny_models, user_data: bool) -> bytes:
    from movierec.training.bundling import make_bundle

    data_split, stages = tiny_models
    return make_bundle(data_split, stages, {"flow": "RecommenderFlow", "run_id": "test", "metrics": []},
                       user_data=user_data)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_models) -> bytes:
    """A real bundle, with per-user data, of the tiny models."""
    return _tiny_bundle(tiny_models, user_data=True)


@pytest.fixture(scope="session")
def tiny_private_bundle(tiny_models) -> bytes:
    """The same models published without per-user data."""
    return _tiny_bundle(tiny_models, user_data=False)


@pytest.fixture(scope="session")
def tiny_rp3beta_models(small_encoded):
    """The tiny models with RP3beta switched on beside the default sources."""
    return tiny_stages(small_encoded, rp3beta=True)


@pytest.fixture(scope="session")
def tiny_rp3beta_bundle(tiny_rp3beta_models) -> bytes:
    return _tiny_bundle(tiny_rp3beta_models, user_data=True)


@pytest.fixture(scope="session")
def tiny_implicit_models(small_encoded):
    """(data split, both stages) of the toy data taken as implicit-only: every rating 1.0, no rating model."""
    enc = dataclasses.replace(small_encoded, rating=np.ones_like(small_encoded.rating), implicit=True)
    return tiny_stages(enc)


@pytest.fixture(scope="session")
def tiny_implicit_bundle(tiny_implicit_models) -> bytes:
    return _tiny_bundle(tiny_implicit_models, user_data=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def runs(metaflow_root, ml100k_dir):
    """One flow run failing at an injected fault in ``evaluate``, then its resume (which publishes
    to a local index in the test folder): every step runs once, shared by several test modules."""
    from metaflow import Runner, namespace

    from movierec.training.faults import ENV_VAR

    namespace(None)
    params = {**BUDGET, "index_dir": str(Path(metaflow_root) / "pypi")}
    with Runner(FLOW, show_output=False, pylint=False, env={ENV_VAR: "evaluate"}, cwd=metaflow_root).run(
        **params
    ) as failed:
        failed_status, failed_run = failed.status, failed.run
    with Runner(FLOW, show_output=False, pylint=False, env={ENV_VAR: ""}, cwd=metaflow_root).resume() as resumed:
        resumed_status, resumed_run = resumed.status, resumed.run
        stdout = resumed.stdout + resumed.stderr
    return failed_status, failed_run, resumed_status, resumed_run, stdout


BODY_TIMEOUT = 2.0  # the test server's: stalled uploads are cut off after this many seconds


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, what: str, seconds: float = 60) -> None:
    """Wait until ``url`` answers 2xx; raise with the process's output if ``proc`` exits first or
    ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            output = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"{what} did not come up at {url}: {output}")
        time.sleep(0.2)


class InProcessAPI:
    """An ASGI app (``movierec.serving.api.create_app``) called in this process as a server calls it, for the
    tests of what the API answers: a server process adds nothing there but its start (a fresh Python,
    the model loaded again). Tests of the HTTP layer (uvicorn's parsing, stalled or chunked uploads,
    connections), of the installed command and of the process itself use the ``server`` fixture."""

    HOST = "127.0.0.1:8000"  # a loopback name: the API's default Host allowlist takes it

    def __init__(self, app: typing.Callable) -> None:
        self.app = app

    def request(self, method: str, path: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of one request; ``path`` may carry a query."""
        return asyncio.run(self._request(method, path, data or b"", headers or {}))

    async def _request(self, method: str, path: str, data: bytes,
                       headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        url = urllib.parse.urlsplit(path)
        sent = {"host": self.HOST} | ({"content-length": str(len(data))} if data else {}) | {
            k.lower(): v for k, v in headers.items()}
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": urllib.parse.unquote(url.path), "raw_path": url.path.encode(),
                 "query_string": url.query.encode(), "root_path": "", "client": ("127.0.0.1", 40000),
                 "server": ("127.0.0.1", 8000), "headers": [(k.encode(), v.encode()) for k, v in sent.items()]}
        answered, body_sent = asyncio.Event(), False
        status, reply_headers, reply = 0, {}, bytearray()

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            await answered.wait()  # as a connection stays open until the answer is out
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                reply_headers.update((k.decode().lower(), v.decode()) for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body":
                reply.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    answered.set()

        await asyncio.wait_for(self.app(scope, receive, send), 60)  # a hung app fails the test, not the run
        return status, reply_headers, bytes(reply)


def call(base: str | InProcessAPI, method: str, path: str, body: object = None, *, raw: bytes | None = None,
         content_type: str | None = "application/json", key: str | None = None) -> tuple[int, object]:
    """(status, JSON answer) of one request to a server at ``base`` or to an app in this process;
    ``key``: the API key to send (Authorization: Bearer)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = ({} if content_type is None else {"Content-Type": content_type}) | (
        {} if key is None else {"Authorization": f"Bearer {key}"})
    if isinstance(base, InProcessAPI):
        status, _, payload = base.request(method, path, data, headers)
        return status, json.loads(payload)
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def clean_env() -> dict[str, str]:
    """The environment without anything pointing into the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="session")
def light_install(tmp_path_factory, tiny_bundle) -> Path:
    """A fresh virtual environment with this checkout's wheel (the tiny bundle inside) installed as
    someone who only serves installs it, ``movierec[serve]``: numpy, Annoy, FastAPI and uvicorn, no
    torch (tests/test_install.py checks). The REST API tests run against it."""
    from movierec.training import packaging

    root = tmp_path_factory.mktemp("light")
    wheel = packaging.build_wheel(tiny_bundle, "0.1.0.post9", root)
    # the lock's versions (without its hashes, which pip refuses in constraints): the same FastAPI,
    # pydantic and numpy as the rest of the suite, whatever PyPI holds today
    lock = (Path(__file__).resolve().parent.parent / "requirements.txt").read_text().splitlines()
    (root / "constraints.txt").write_text("\n".join(line.split()[0] for line in lock if "==" in line.split(" ")[0]))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    out = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(root / "constraints.txt"),
                          f"{wheel}[serve]"], capture_output=True, text=True, cwd=root, env=clean_env(), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return venv


@contextlib.contextmanager
def serving(light_install: Path, bundle: bytes, folder: Path, *options: str) -> typing.Iterator[tuple[str, Path]]:
    """`movierec serve` from the light installation over ``bundle``, its ratings store (and its
    default keys file, movierec-keys.json) in ``folder``, with more ``options`` for `serve`:
    (base URL, the store's file)."""
    path, store = folder / "model.zip", folder / "ratings.sqlite3"
    path.write_bytes(bundle)
    port = free_port()
    proc = subprocess.Popen([str(light_install / "bin" / "movierec"), "--model", str(path), "serve", "--port",
                             str(port), "--body-timeout", str(BODY_TIMEOUT), "--store", str(store), *options],
                            cwd=folder, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/health", proc, "movierec serve")
        yield base, store
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_bundle, light_install):
    """A real `movierec serve` process on loopback over the tiny bundle, from the light
    installation: (base URL, the same model loaded in-process, to compare answers with)."""
    from movierec.serving.recommender import Recommender

    with serving(light_install, tiny_bundle, tmp_path_factory.mktemp("api")) as (base, _):
        yield base, Recommender.from_bytes(tiny_bundle)


