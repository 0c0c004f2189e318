import os
import tempfile

import numpy as np
import pytest

from movierec.core.settings import IndexSettings
from movierec.models import index


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_top_k_matches_full_sort(rng):
    q, v = _unit(rng, 30, 8), _unit(rng, 200, 8)
    got = index.exact_top_k(q, v, 10, chunk=7)
    want = np.argsort(-(q @ v.T), axis=1)[:, :10]
    assert np.array_equal(got, want)


def test_recall_by_hand():
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[3, 2, 9], [6, 5, 4]])
    assert index.recall_at_k(approx, exact) == 4 / 6


@pytest.mark.parametrize("memfd", [True, False])
def test_annoy_round_trip_and_recall_leaves_no_file(rng, tmp_path, monkeypatch, memfd):
    """Every Recommender load used to leave its Annoy file in the temp folder: now none is ever
    left there, with memfd or, where the OS has none, a file removed once Annoy has mapped it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    items, users = _unit(rng, 500, 16), _unit(rng, 50, 16)
    settings = IndexSettings(n_trees=30)
    blob = index.build(items, settings)
    assert isinstance(blob, bytes) and len(blob) > 0
    with index.Index(blob, 16, settings) as ix:
        assert list(tmp_path.iterdir()) == []
        approx = ix.query_many(users, 20)
        first = ix.query(items[7], 1)
        assert len(ix) == 500
    assert first.tolist() == [7]  # an item's nearest neighbour is itself
    assert index.recall_at_k(approx, index.exact_top_k(users, items, 20)) > 0.9
    assert list(tmp_path.iterdir()) == []


def test_build_is_deterministic_for_a_seed(rng):
    items = _unit(rng, 100, 8)
    s = IndexSettings(n_trees=5)
    assert index.build(items, s, seed=1) == index.build(items, s, seed=1)
