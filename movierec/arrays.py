"""Array utilities shared by training, evaluation and serving: CSR adjacency of index pairs (e.g.
each user's rated movies), and top-k selection, with or without excluded columns.

Plain numpy (and torch.topk, imported on use), vectorised: no per-user Python loops at ML-20M size.
"""

from __future__ import annotations

import numpy as np


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
