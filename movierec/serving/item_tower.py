"""The two-tower model's item side served with numpy alone, for movies added after training:
``item_tower.npz`` holds what turns a movie's genres, title and year into its retrieval vector
without its id embedding (``TwoTower.content_vectors``), the way the coldstart protocol measures it.

Only the features' embedding tables and the item MLP travel: a new movie has no trained id
embedding, so the MLP's columns for it are left out. ``movierec.training.export`` writes the
tables and checks them against torch; ``movierec.core.movie_features`` encodes a new movie's
features as training encoded the catalogue's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from movierec.serving.rating_tables import NpzTables


def bag_mean(table: np.ndarray, bags: np.ndarray) -> np.ndarray:
    """torch's EmbeddingBag(mode="mean", padding_idx=0): each row's mean embedding over its
    non-zero indices, zeros for a row of padding only."""
    present = (bags > 0)[..., None]
    return (table[bags] * present).sum(1) / np.maximum(present.sum(1), 1)


@dataclass(frozen=True)
class ItemTowerTables(NpzTables):
    """``genres``/``title``/``year``: the features' embedding tables (index 0 = unknown);
    ``w1``/``b1``: the MLP's first layer on those embeddings (the id embedding's columns dropped),
    ``w2``/``b2``: its output layer."""

    genres: np.ndarray
    title: np.ndarray
    year: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    KIND: ClassVar[str] = "item tower"

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Unit float32 vectors of the movies whose padded feature indices ``features`` holds
        (``MovieVocabulary.features``)."""
        x = np.concatenate([bag_mean(self.genres, features["genres"]), bag_mean(self.title, features["title"]),
                            self.year[features["year"][:, 0]]], axis=1)
        out = np.maximum(x @ self.w1.T + self.b1, 0.0) @ self.w2.T + self.b2
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    @property
    def sizes(self) -> dict[str, int]:
        """Each feature's table size, which the catalogue's vocabularies must match."""
        return {"genres": len(self.genres), "title": len(self.title), "year": len(self.year)}

    def checks(self) -> dict[str, bool]:
        width = sum(t.shape[1] if t.ndim == 2 else -1 for t in (self.genres, self.title, self.year))
        return {
            "first layer": self.w1.ndim == 2 and self.w1.shape[1] == width and self.b1.shape == self.w1.shape[:1],
            "output layer": self.w2.ndim == 2 and self.w2.shape[1] == len(self.b1)
            and self.b2.shape == self.w2.shape[:1],
        }
