"""Approximate nearest-neighbour search over item embeddings with Annoy.

The towers emit unit vectors, so Annoy's angular distance orders items exactly as the dot
product does. The index is kept as the bytes of Annoy's file, which is what Metaflow versions
and what the published bundle ships. Annoy loads only from a path (it memory-maps the file), so
loading hands it an anonymous in-memory file (``memfd``) where the OS has one: nothing is ever
written to disk, so nothing is left behind however the process ends. Elsewhere a temporary file
is removed as soon as Annoy has mapped it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
from annoy import AnnoyIndex

from movierec.metrics import top_k

METRIC = "angular"


@dataclass
class IndexSettings:
    n_trees: int = 50
    search_k: int = -1  # Annoy's default: n_trees * k nodes inspected per query
    metric: str = METRIC


def build(vectors: np.ndarray, settings: IndexSettings, seed: int = 42) -> bytes:
    """Build an Annoy index over ``vectors`` (row i = item index i) and return the file's bytes."""
    index = AnnoyIndex(vectors.shape[1], settings.metric)
    index.set_seed(seed)
    for i, v in enumerate(vectors):
        index.add_item(i, v)
    index.build(settings.n_trees, n_jobs=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "items.ann")
        index.save(path)
        index.unload()
        with open(path, "rb") as f:
            return f.read()


def _load(index: AnnoyIndex, blob: bytes) -> None:
    """Have Annoy map ``blob`` without leaving a file behind (see the module docstring)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("movierec-index")
        try:
            _write_all(fd, blob)
            index.load(f"/proc/self/fd/{fd}")  # Annoy opens, maps and closes its own descriptor
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(suffix=".ann")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        index.load(path)
    finally:
        os.remove(path)  # the mapping outlives the name


def _write_all(fd: int, blob: bytes) -> None:
    """os.write writes at most about 2 GiB per call."""
    view = memoryview(blob)
    while view:
        view = view[os.write(fd, view) :]


class Index:
    """A loaded Annoy index over ``blob`` (the bytes of an Annoy file); unmapped on close."""

    def __init__(self, blob: bytes, dim: int, settings: IndexSettings):
        self.settings = settings
        self._index = AnnoyIndex(dim, settings.metric)
        _load(self._index, blob)

    def query(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` nearest items, nearest first."""
        return np.asarray(self._index.get_nns_by_vector(vector, k, search_k=self.settings.search_k), dtype=np.int64)

    def query_many(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` item indices for each row; rows are padded with -1 if Annoy returns fewer."""
        out = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, v in enumerate(vectors):
            found = self.query(v, k)
            out[row, : len(found)] = found
        return out

    def __len__(self) -> int:
        return self._index.get_n_items()

    def close(self) -> None:
        self._index.unload()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Exact top-``k`` by dot product, in chunks of queries: the ground truth for Annoy's recall."""
    return np.concatenate(
        [top_k(queries[i : i + chunk] @ vectors.T, k) for i in range(0, len(queries), chunk)]
        or [np.empty((0, min(k, len(vectors))), dtype=np.int64)]
    )


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k that the approximate search also returned (order ignored)."""
    hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact))
    return hits / exact.size if exact.size else 0.0
