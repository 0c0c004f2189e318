"""Test isolation: Metaflow and Ray write into a throw-away folder, never into the checkout.

Metaflow reads its configuration when first imported, so the environment is set here, before
any test module imports it.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

_ROOT = tempfile.mkdtemp(prefix="movierec-tests-")
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = _ROOT
os.environ["METAFLOW_HOME"] = _ROOT
os.environ.setdefault("USERNAME", "movierec-tests")
os.environ.pop("MOVIEREC_FAIL_STEP", None)

ML100K = Path(__file__).resolve().parent.parent / "data" / "ml-100k"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def metaflow_root() -> str:
    return _ROOT


@pytest.fixture(scope="session")
def small_encoded():
    """A small synthetic data set, encoded: fast enough for model tests."""
    from movierec import synthetic
    from movierec.features import encode

    return encode(synthetic.generate(n_users=200, n_items=150, n_ratings=6000, seed=3))


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real ML-100K (fetched by `make data`, which `make test` runs first)."""
    if not (ML100K / "ml-100k.inter").exists():
        pytest.skip("ML-100K not fetched: run `make data`")
    return ML100K


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
