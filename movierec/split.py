"""Train/test splits with no leakage: deterministic, and test restricted to known users and items.

Splits are returned as index arrays into the encoded ratings, so the data itself is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from movierec.features import Encoded

# How a split is drawn; an evaluation protocol (``movierec.protocols``) names one of these.
METHODS = ("random", "temporal", "stratified")


@dataclass
class Split:
    train: np.ndarray  # int64 indices into the ratings
    test: np.ndarray
    method: str  # one of METHODS
    dropped_test: int  # test ratings removed because their user or item never occurs in train
    cutoff_timestamp: int | None = None  # temporal method: test ratings are at or after this time

    def summary(self) -> dict[str, object]:
        return {
            "method": self.method,
            "train": len(self.train),
            "test": len(self.test),
            "dropped_test": self.dropped_test,
            "cutoff_timestamp": self.cutoff_timestamp,
        }


def _known_only(train: np.ndarray, test: np.ndarray, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
    known_u = np.zeros(user_idx.max(initial=0) + 1, dtype=bool)
    known_i = np.zeros(item_idx.max(initial=0) + 1, dtype=bool)
    known_u[user_idx[train]] = True
    known_i[item_idx[train]] = True
    return test[known_u[user_idx[test]] & known_i[item_idx[test]]]


def split_ratings(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    timestamp: np.ndarray,
    method: str = "random",
    test_fraction: float = 0.2,
    seed: int = 42,
) -> Split:
    """Split ratings into train and test.

    - ``random``: a seeded permutation; the last ``test_fraction`` is test.
    - ``temporal``: one global time cutoff; everything at or after the ``1 - test_fraction``
      quantile of timestamps is test (the honest production split: no peeking at the future).
    - ``stratified``: per user, a seeded shuffle of their ratings; the first
      ``round((1 - test_fraction) * n_user)`` are train (Microsoft Recommenders'
      ``python_stratified_split``), so every user is in both sides.

    Test ratings whose user or item is absent from train are dropped (and counted), because no
    model can score an id it has never seen.
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
    else:
        # Ties broken by index so the split is deterministic whatever the sort implementation.
        order = np.lexsort((np.arange(n), timestamp))
        n_test = int(round(n * test_fraction))
        cutoff = int(timestamp[order[n - n_test]])
        is_test = timestamp >= cutoff
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    kept = _known_only(train, test, user_idx, item_idx)
    return Split(train.astype(np.int64), kept.astype(np.int64), method, len(test) - len(kept), cutoff)


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
