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
import time
from dataclasses import dataclass

import numpy as np
from annoy import AnnoyIndex

from movierec.core.arrays import top_k
from movierec.core.settings import IndexSettings


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


def check_structure(blob: bytes, dim: int) -> None:
    """Raise ValueError unless ``blob`` is a well-formed angular Annoy file for ``dim``-dimensional
    vectors. Annoy trusts its file: a child index pointing outside it is followed during a query
    and crashes the process (a segfault, not an exception), so a bundle's index is checked here,
    whatever its checksum says. The layout (annoylib.h, angular metric): nodes of ``12 + 4 * dim``
    bytes, each an int32 descendant count, then either two int32 children (a split) or, when the
    count is at most ``dim + 2``, that many item ids, then the float32 plane or vector. Items come
    first (count 1); every split's children come before it (Annoy writes children first, which
    also rules out cycles); the last node is a root, whose count Annoy takes as the number of items."""
    width = 3 + dim  # int32 words a node holds
    if not blob or len(blob) % (4 * width):
        raise ValueError(f"{len(blob)} bytes are not a whole number of {4 * width}-byte nodes for {dim}-d vectors")
    nodes = np.frombuffer(blob, dtype=np.int32).reshape(-1, width)
    counts, n_nodes, listed_max = nodes[:, 0], len(nodes), dim + 2
    n_items = int(counts[-1])
    if not 0 < n_items <= n_nodes or (counts[:n_items] != 1).any():
        raise ValueError(f"the file does not start with {n_items} items")
    if ((counts < 1) | (counts > n_items)).any():
        raise ValueError("a node counts fewer than 1 or more descendants than there are items")
    inner = np.arange(n_nodes) >= n_items
    lists = inner & (counts <= listed_max)
    ids = nodes[lists, 1 : 1 + listed_max]
    used = np.arange(listed_max)[None, :] < counts[lists, None]
    if (((ids < 0) | (ids >= n_items)) & used).any():
        raise ValueError("a leaf lists an item that is not in the index")
    splits = np.flatnonzero(inner & (counts > listed_max))
    children = nodes[splits, 1:3]
    if ((children < 0) | (children >= splits[:, None])).any():
        raise ValueError("a split node points to a node that does not come before it")


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
        if settings.metric != "angular":
            raise ValueError(f"only angular Annoy indexes can be checked and loaded, not {settings.metric!r}")
        check_structure(blob, dim)
        self.settings = settings
        self._index = AnnoyIndex(dim, settings.metric)
        _load(self._index, blob)

    def query(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` nearest items, nearest first."""
        return np.asarray(self._index.get_nns_by_vector(vector, k, search_k=self.settings.search_k), dtype=np.int64)

    def query_excluding(self, vector: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
        """The ``k`` nearest items that are not in ``exclude`` (e.g. what a user rated): Annoy
        cannot filter, so ask for enough neighbours to survive removing them."""
        found = self.query(vector, k + len(exclude))
        return found[~np.isin(found, exclude)][:k]

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


@dataclass
class IndexQuality:
    """How the Annoy index compares with exact search on the same user queries."""

    recall_at_100: float
    annoy_ms_per_query: float
    exact_ms_per_query: float
    n_items: int
    dim: int


@dataclass
class RetrievalIndex:
    """What retrieval serves from, kept together: every user's and movie's vector, the Annoy index
    over the movie vectors (the bytes of its file) with its settings, and how good it is."""

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    blob: bytes
    settings: IndexSettings
    quality: IndexQuality

    def open(self) -> Index:
        return Index(self.blob, self.item_vectors.shape[1], self.settings)


def build_index(user_vecs: np.ndarray, item_vecs: np.ndarray, settings: IndexSettings, seed: int = 42,
                max_queries: int = 10_000) -> RetrievalIndex:
    """The Annoy index over ``item_vecs``, measured against exact search (recall@100 and time per
    query) on the users' vectors as queries: a uniform sample of ``max_queries`` of them on large
    data, as Annoy takes one query at a time."""
    blob = build(item_vecs, settings, seed)
    queries = user_vecs
    if len(queries) > max_queries:
        queries = queries[np.sort(np.random.default_rng(0).choice(len(queries), max_queries, replace=False))]
    k = 100
    t0 = time.perf_counter()
    exact = exact_top_k(queries, item_vecs, k)
    t1 = time.perf_counter()
    with Index(blob, item_vecs.shape[1], settings) as ix:
        approx = ix.query_many(queries, k)
    t2 = time.perf_counter()
    n = max(1, len(queries))
    quality = IndexQuality(recall_at_k(approx, exact), 1000 * (t2 - t1) / n, 1000 * (t1 - t0) / n,
                           len(item_vecs), item_vecs.shape[1])
    return RetrievalIndex(user_vecs, item_vecs, blob, settings, quality)
