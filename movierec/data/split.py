"""Train/test splits with no leakage: deterministic, and test restricted to known users and items.

Splits are returned as index arrays into the encoded ratings, so the data itself is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from movierec.data.features import Encoded

# How a split is drawn; an evaluation protocol (``movierec.core.protocols``) names one of these.
METHODS = ("random", "temporal", "stratified", "coldstart")


@dataclass
class Split:
    train: np.ndarray  # int64 indices into the ratings
    test: np.ndarray
    method: str  # one of METHODS
    dropped_test: int  # test ratings removed because their user or item never occurs in train
    cutoff_timestamp: int | None = None  # temporal method: test ratings are at or after this time
    feedback_train: int = 0  # ratings users sent, in train (join_training)
    feedback_left_out: int = 0  # sent ratings of a test (user, movie) pair (coldstart: of a test movie): not trained on
    feedback_replaced: int = 0  # train ratings of the data replaced by a later rating a user sent of the same pair
    feedback_outdated: int = 0  # ratings users sent older than the data's rating of the same pair: not trained on

    def summary(self) -> dict[str, object]:
        return {
            "method": self.method,
            "train": len(self.train),
            "test": len(self.test),
            "dropped_test": self.dropped_test,
            "cutoff_timestamp": self.cutoff_timestamp,
            "feedback_train": self.feedback_train,
            "feedback_left_out": self.feedback_left_out,
            "feedback_replaced": self.feedback_replaced,
            "feedback_outdated": self.feedback_outdated,
        }


def _known_only(train: np.ndarray, test: np.ndarray, user_idx: np.ndarray, item_idx: np.ndarray, *,
                items: bool = True) -> np.ndarray:
    """The test ratings whose user (and, with ``items``, whose movie) occurs in train."""
    known_u = np.zeros(user_idx.max(initial=0) + 1, dtype=bool)
    known_u[user_idx[train]] = True
    keep = known_u[user_idx[test]]
    if items:
        known_i = np.zeros(item_idx.max(initial=0) + 1, dtype=bool)
        known_i[item_idx[train]] = True
        keep &= known_i[item_idx[test]]
    return test[keep]


def split_ratings(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    timestamp: np.ndarray,
    method: str = "random",
    test_fraction: float = 0.2,
    *,
    seed: int = 42,
) -> Split:
    """Split ratings into train and test.

    - ``random``: a seeded permutation; the last ``test_fraction`` is test.
    - ``temporal``: one global time cutoff; everything at or after the ``1 - test_fraction``
      quantile of timestamps is test (the honest production split: no peeking at the future).
    - ``stratified``: per user, a seeded shuffle of their ratings; the first
      ``round((1 - test_fraction) * n_user)`` are train (Microsoft Recommenders'
      ``python_stratified_split``), so every user is in both sides.
    - ``coldstart``: a seeded ``test_fraction`` of the rated movies is held out with all their
      ratings: test is every rating of those movies, train every other rating. What it measures
      is how well a model recommends movies nobody has rated yet, from their features alone.

    Test ratings whose user is absent from train are dropped (and counted), and so are those
    whose item is, except under ``coldstart``, where that is the point: no model can score an id
    it has never seen, except through its features.
    """
    if method not in METHODS:
        raise ValueError(f"unknown split method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(user_idx)
    cutoff = None
    if method == "random":
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(n * test_fraction))
        train, test = np.sort(perm[: n - n_test]), np.sort(perm[n - n_test :])
    elif method == "stratified":
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(n), user_idx))  # users together, shuffled within each user
        counts = np.bincount(user_idx)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n) - starts[user_idx[order]]
        n_train = np.round(counts * (1.0 - test_fraction)).astype(np.int64)
        is_test = position >= n_train[user_idx]
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    elif method == "coldstart":
        rated = np.unique(item_idx)
        n_cold = min(len(rated) - 1, max(1, int(round(len(rated) * test_fraction))))
        cold = np.zeros(item_idx.max(initial=0) + 1, dtype=bool)
        cold[np.random.default_rng(seed).choice(rated, n_cold, replace=False)] = True
        is_test = cold[item_idx]
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    else:
        # Ties broken by index so the split is deterministic whatever the sort implementation.
        order = np.lexsort((np.arange(n), timestamp))
        n_test = int(round(n * test_fraction))
        cutoff = int(timestamp[order[n - n_test]])
        is_test = timestamp >= cutoff
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    kept = _known_only(train, test, user_idx, item_idx, items=method != "coldstart")
    return Split(train.astype(np.int64), kept.astype(np.int64), method, len(test) - len(kept), cutoff)


def join_training(split: Split, user_idx: np.ndarray, item_idx: np.ndarray, timestamp: np.ndarray, n_base: int
                  ) -> Split:
    """``split``, drawn over the first ``n_base`` ratings (the data), with the ratings after them
    (what users sent through the API, ``Dataset.feedback``) joined to its training part only.

    What an evaluator expects of a retrain with feedback: the test split, and so the reported
    figures, are those of the data alone, whatever users sent; and everything users sent is
    learnt from, however new (under the temporal protocol all of it is newer than the cutoff).
    Hence: the test ratings are ``split.test`` unchanged (the known-user check was made against
    the data's train part); a sent rating of a (user, movie) pair of the test split is left out of
    training, since training on the very pair a metric scores would leak the answer, and under the
    ``coldstart`` method so is any sent rating of a held-out movie, which must stay unrated in
    training (both counted in ``feedback_left_out``); a sent rating of a pair already in train
    replaces the data's rating when it is later (as ``data.tidy`` keeps each pair's latest;
    ``feedback_replaced``), and is left out when it is older (``feedback_outdated``). Under the
    temporal protocol the model thus trains on ratings newer than the test period; the figures
    still describe that period of the data, on pairs the model never saw.
    """
    n = len(user_idx)
    if n == n_base:
        return split
    n_items = int(item_idx.max(initial=0)) + 1
    pairs = user_idx.astype(np.int64) * n_items + item_idx
    sent = np.arange(n_base, n, dtype=np.int64)
    on_test = np.isin(pairs[sent], pairs[split.test])
    if split.method == "coldstart":  # a held-out movie stays unrated in training, whoever sent a rating of it
        on_test |= np.isin(item_idx[sent], item_idx[split.test])
    sent = sent[~on_test]
    # Each pair's latest rating among the data's train part and what was sent (a tie: the sent one).
    train = np.concatenate([split.train, sent])
    order = np.lexsort((train, timestamp[train], pairs[train]))
    ordered = pairs[train][order]
    last = np.ones(len(ordered), dtype=bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    kept = np.sort(train[order][last])
    n_sent = int((kept >= n_base).sum())
    return replace(split, train=kept, feedback_train=n_sent, feedback_left_out=int(on_test.sum()),
                   feedback_replaced=len(split.train) - (len(kept) - n_sent), feedback_outdated=len(sent) - n_sent)


def holdout(indices: np.ndarray, fraction: float, seed: int, cap: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Carve a random validation subset out of training indices (model selection never sees test):
    ``fraction`` of them, at most ``cap``; everything else is the fit part. Each carve-out is the
    start of one seeded permutation, so with the same seed a smaller one lies inside a larger one."""
    perm = np.random.default_rng(seed).permutation(indices)
    n_val = max(1, int(round(len(indices) * fraction)))
    n_val = min(n_val, cap) if cap is not None else n_val
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class DataSplit:
    """The encoded ratings and the split a protocol drew over them: what every model step reads."""

    enc: Encoded
    split: Split
