"""Array utilities shared by training, evaluation and serving: (user, movie) pairs as one value
(:class:`Interactions`), CSR adjacency of index pairs (e.g. each user's rated movies), and top-k
selection, with or without excluded columns.

Plain numpy (and torch.topk, imported on use), vectorised: no per-user Python loops at ML-20M size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class EncodedPairs(Protocol):
    """What :meth:`Interactions.of` reads of encoded data (``movierec.data.features.Encoded``), named
    here so the core layer does not import the data layer (nor pyarrow, which features loads)."""

    user_idx: np.ndarray
    item_idx: np.ndarray
    rating: np.ndarray

    @property
    def n_users(self) -> int: ...

    @property
    def n_items(self) -> int: ...


@dataclass(frozen=True, eq=False)
class Interactions:
    """(user, movie) index pairs, the sizes of both index spaces, and the pairs' stars when known.

    The models' fits, the LightGCN graph and the rated-movies adjacency take this one value: the
    pairs and sizes used to travel as four loose positional arguments, where swapping ``users``
    and ``items`` or ``n_users`` and ``n_items`` failed far from the call (an index error inside a
    solve) or not at all (as many users as movies). They are checked once, here: aligned 1-D
    integer arrays, every index inside its space."""

    users: np.ndarray  # int [n]
    items: np.ndarray  # int [n]
    n_users: int
    n_items: int
    ratings: np.ndarray | None = None  # float [n], the stars; None for pairs without them

    def __post_init__(self) -> None:
        n = len(self.users)
        for name, values in (("users", self.users), ("items", self.items), ("ratings", self.ratings)):
            if values is None:
                continue
            if values.ndim != 1 or len(values) != n:
                raise ValueError(f"Interactions: {name} has shape {values.shape}, expected ({n},) like users")
            if name != "ratings" and n and not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f"Interactions: {name} are {values.dtype}, expected integer indices")
        for name, values, size in (("user", self.users, self.n_users), ("item", self.items, self.n_items)):
            if n and (values.min() < 0 or values.max() >= size):
                bad = values[(values < 0) | (values >= size)][0]
                raise ValueError(f"Interactions: {name} index {bad} is outside 0..{size - 1} (n_{name}s={size})")

    @classmethod
    def of(cls, enc: EncodedPairs, rows: np.ndarray | None = None, *, stars: bool = True) -> Interactions:
        """The ratings ``rows`` (indices or a boolean mask; default all) of encoded data, with
        their stars (1.0 throughout for implicit-only data) unless ``stars`` is False: pairs
        whose stars nobody reads then skip copying them (64 MB of a 16M-rating ML-20M fit)."""
        pick = slice(None) if rows is None else rows
        ratings = enc.rating[pick] if stars else None
        return cls(enc.user_idx[pick], enc.item_idx[pick], enc.n_users, enc.n_items, ratings)

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, rows: np.ndarray) -> Interactions:
        """The pairs ``rows`` (indices or a boolean mask) selects, in the same index spaces."""
        return Interactions(self.users[rows], self.items[rows], self.n_users, self.n_items,
                            None if self.ratings is None else self.ratings[rows])

    def stars(self) -> np.ndarray:
        """The ratings, for a fit that learns stars; pairs without them are a clear error there."""
        if self.ratings is None:
            raise ValueError("these interactions carry no ratings: fitting stars needs (user, movie, rating) triples")
        return self.ratings

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of each user's movies (:func:`csr`), e.g. the movies to exclude."""
        return csr(self.users, self.items, self.n_users)


def csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of a row -> columns adjacency, e.g. each user's rated items."""
    order = np.argsort(rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    return indptr, cols[order]


def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of the given CSR ``rows``: (position of the row in ``rows``, column), no loop."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    offsets = np.cumsum(lengths) - lengths
    positions = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))
    return np.repeat(np.arange(len(rows)), lengths), indices[positions]


def top_k_excluding(scores: np.ndarray, rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                    k: int) -> np.ndarray:
    """Top-``k`` columns of each score row, best first, never returning the columns that the CSR
    ``indptr``/``indices`` lists for that row's entry in ``rows`` (e.g. a user's rated movies).
    Excluded entries of ``scores`` are overwritten with -inf in place: callers pass a fresh
    product, and copying a chunk of ML-20M scores (110 MB) took longer than searching it."""
    scores[csr_rows(indptr, indices, rows)] = -np.inf
    return top_k(scores, k)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` columns of each score row, best first (torch.topk: several times faster than
    numpy's argpartition + sort on CPU, which dominated evaluation at ML-20M size)."""
    import torch

    k = min(k, scores.shape[1])
    return torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1).indices.numpy()


def concat_rows(parts: list[np.ndarray], fill: float) -> np.ndarray:
    """Row blocks of different widths (second axis) stacked, the narrower padded with ``fill``."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2),
                                  constant_values=fill) for p in parts])
