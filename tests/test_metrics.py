import math

import numpy as np

from movierec.core import arrays, metrics


def test_target_ranks_by_hand():
    # One-dimensional embeddings: user 0 likes large item values, user 1 small ones.
    users = np.array([[1.0], [-1.0]], dtype=np.float32)
    items = np.array([[0.1], [0.5], [0.9], [0.3]], dtype=np.float32)
    ranks = metrics.target_ranks(users, items, np.array([0, 0, 1, 1]), np.array([2, 3, 0, 2]), chunk=1)
    # user 0 order: 2, 1, 3, 0 -> item 2 rank 0, item 3 rank 2; user 1 order: 0, 3, 1, 2.
    assert ranks.tolist() == [0, 2, 0, 3]


def test_categorical_accuracy_counts_share_within_k():
    acc = metrics.categorical_accuracy(np.array([0, 2, 0, 3, 7]), ks=(1, 3, 10))
    assert acc == {1: 2 / 5, 3: 3 / 5, 10: 1.0}


def test_ranks_in_lists():
    lists = np.array([[5, 3, 1], [2, 4, 6]])
    assert metrics.ranks_in_lists(lists, np.array([1, 9])).tolist() == [2, 3]


def test_rmse_and_mae_by_hand():
    pred, true = np.array([3.0, 4.0, 1.0]), np.array([4.0, 4.0, 3.0])
    assert math.isclose(metrics.rmse(pred, true), math.sqrt(5 / 3))
    assert math.isclose(metrics.mae(pred, true), 1.0)


def _hits(recs: np.ndarray, relevant: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Hit matrix and relevant counts of hand-written lists, through the evaluator's key lookup."""
    pairs = [(u, i) for u, rel in enumerate(relevant) for i in rel]
    users = np.array([u for u, _ in pairs], dtype=np.int32)
    items = np.array([i for _, i in pairs], dtype=np.int32)
    keys = metrics.relevant_keys(users, items, 100)
    return metrics.hits(recs, np.arange(len(recs)), keys, 100), np.array([len(r) for r in relevant])


def test_hits_find_relevant_pairs_and_ignore_padding():
    hit, n_rel = _hits(np.array([[3, 1, -1], [3, 5, 6]]), [{1, 2}, {3}])
    assert hit.tolist() == [[False, True, False], [True, False, False]] and n_rel.tolist() == [2, 1]


def test_ndcg_by_hand():
    recs = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    relevant = [{2, 3}, set(), {7, 99, 98, 97}]
    # user 0: hits at positions 2 and 3 -> (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    u0 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    # user 2: hit at position 1 of 3, four relevant items -> 1 / (1 + 1/log2(3) + 1/2)
    u2 = 1 / (1 + 1 / math.log2(3) + 0.5)
    # user 1 has nothing relevant and is left out of the mean.
    assert math.isclose(metrics.ndcg_at_k(*_hits(recs, relevant), k=3), (u0 + u2) / 2)
    assert metrics.ndcg_at_k(*_hits(np.array([[1, 2]]), [{1, 2}]), k=2) == 1.0


def test_csr_and_top_k_excluding():
    indptr, indices = arrays.csr(np.array([1, 0, 1, 2]), np.array([7, 8, 9, 5]), 4)
    assert indptr.tolist() == [0, 1, 3, 4, 4]
    assert indices[indptr[1] : indptr[2]].tolist() == [7, 9]
    scores = np.array([[0.9, 0.1, 0.8, 0.5], [0.2, 0.3, 0.1, 0.0]])
    # Score rows are for users 0 and 3: user 0 has rated item 0, user 3 nothing.
    seen_ptr, seen = arrays.csr(np.array([0]), np.array([0]), 4)
    top = arrays.top_k_excluding(scores, np.array([0, 3]), seen_ptr, seen, 2)
    assert top.tolist() == [[2, 3], [1, 0]]
    assert arrays.top_k(scores, 10).shape == (2, 4)


def test_precision_recall_by_hand():
    recs = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    relevant = [{2, 4, 99}, set(), {9}]
    p, r = metrics.precision_recall_at_k(*_hits(recs, relevant), k=4)
    assert math.isclose(p, (2 / 4 + 1 / 4) / 2)
    assert math.isclose(r, (2 / 3 + 1 / 1) / 2)
