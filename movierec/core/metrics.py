"""Ranking and rating metrics, written to their textbook definitions and tested by hand.

Categorical accuracy follows TensorFlow Recommenders' FactorizedTopK: the share of test
interactions whose item is among the user's top K of *all* items (seen items not excluded).
NDCG uses binary relevance (a held-out item is relevant) as in Microsoft Recommenders.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10, 50, 100)


def target_ranks(user_vecs: np.ndarray, item_vecs: np.ndarray, users: np.ndarray, items: np.ndarray, *,
                 cap: int = max(KS), chunk: int = 1024) -> np.ndarray:
    """0-based rank of each (user, item) pair's item among all items by dot product; ranks of
    ``cap`` or more are reported as ``cap`` (top-K accuracy needs nothing beyond the largest K).

    Computed in chunks of distinct users, never per interaction: one matrix product and one
    top-``cap`` per chunk, then each target is compared with its user's ``cap`` best scores only
    (comparing it with all scores costs minutes at ML-20M size). The rank counts items scoring
    strictly higher, so ties favour the target; fewer than ``cap`` such items are all in the top.
    """
    import torch

    ranks = np.empty(len(users), dtype=np.int64)
    uniq, inverse = np.unique(users, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(0, len(uniq) + chunk, chunk))
    cap = min(cap, item_vecs.shape[0])
    for c in range(0, len(uniq), chunk):
        scores = torch.from_numpy(np.ascontiguousarray(user_vecs[uniq[c : c + chunk]] @ item_vecs.T))
        best = torch.topk(scores, cap, dim=1).values
        sel = order[bounds[c // chunk] : bounds[c // chunk + 1]]
        rows = torch.from_numpy(inverse[sel] - c)
        targets = scores[rows, torch.from_numpy(np.asarray(items[sel], dtype=np.int64))]
        ranks[sel] = (best[rows] > targets[:, None]).sum(1).numpy()
    return ranks


def ranks_in_lists(lists: np.ndarray, items: np.ndarray) -> np.ndarray:
    """0-based position of each target item in its row of ``lists``; ``lists.shape[1]`` if absent."""
    match = lists == items[:, None]
    found = match.any(axis=1)
    return np.where(found, match.argmax(axis=1), lists.shape[1])


def categorical_accuracy(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Share of interactions whose item ranks within the top K, for each K."""
    return {k: float(np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - true) ** 2)))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - true)))


def relevant_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted distinct ``user * n_items + item`` keys of relevant (held-out) pairs: a set of pairs
    that millions of lookups can probe at once with a binary search."""
    return np.unique(users.astype(np.int64) * n_items + items)


def hits(lists: np.ndarray, users: np.ndarray, keys: np.ndarray, n_items: int) -> np.ndarray:
    """Whether each recommended item (row r of ``lists`` is for ``users[r]``; -1 pads) is relevant."""
    probe = users.astype(np.int64)[:, None] * n_items + lists
    if not len(keys):
        return np.zeros(lists.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
    return (keys[pos] == probe) & (lists >= 0)


def ndcg_at_k(hit: np.ndarray, n_relevant: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k with binary relevance over users with at least one relevant item; ``hit`` holds
    each user's list as relevant or not (see :func:`hits`), ``n_relevant`` their relevant count."""
    has = n_relevant > 0
    hit = hit[has, :k].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_relevant[has], k) - 1]
    return float(np.mean(hit @ discounts[: hit.shape[1]] / ideal)) if has.any() else 0.0


def precision_recall_at_k(hit: np.ndarray, n_relevant: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Mean precision@k (hits / k) and recall@k (hits / relevant) over users with relevant items,
    as Microsoft Recommenders defines them."""
    has = n_relevant > 0
    found = hit[has, :k].sum(axis=1)
    if not has.any():
        return 0.0, 0.0
    return float(np.mean(found / k)), float(np.mean(found / n_relevant[has]))
