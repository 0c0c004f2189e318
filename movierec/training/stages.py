"""The two stages' trained parts, kept together as they travel from training to evaluation and the
bundle: what hands over candidates (the retrieval model's vectors and index, the other sources) and what
orders them (the rating model, whose stars are one feature, and the learned ranker). Implicit-only
data has no rating model (``ranking`` is None) and the ranker no rating feature."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from movierec.models.second_stage import RETRIEVAL

if TYPE_CHECKING:  # the models import torch; these are their types only
    import scipy.sparse as sp

    from movierec.models.index import RetrievalIndex
    from movierec.models.second_stage import Ranker
    from movierec.models.sources import SourceModels, Sources
    from movierec.training.rating_search import RankingResult
    from movierec.training.retrieval import RetrievalResult


@dataclass
class TwoStage:
    retrieval: RetrievalResult
    index: RetrievalIndex
    sources: SourceModels
    ranking: RankingResult | None  # None: implicit-only data, no rating model
    ranker: Ranker | None = None  # None while the ranker is being trained

    def rater(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """Stars of aligned (user, movie) index pairs from the rating model, folded once here (each
        call would fold it again); None where there is no rating model."""
        if self.ranking is None:
            return None
        from movierec.models.rating_model import predict

        folded = self.ranking.model().fold()
        return lambda users, items: predict(folded, users, items)

    def logits(self, users: np.ndarray) -> np.ndarray:
        """[users, movies] retrieval logits: dot products of unit vectors over the temperature."""
        return self.index.user_vectors[users] @ self.index.item_vectors.T / self.retrieval.config.temperature

    def scores(self, users: np.ndarray, history: sp.csr_matrix, fitted: Sources) -> dict[str, np.ndarray]:
        """[users, movies] scores of every candidate source by name: the retrieval model's logits and
        ``fitted``'s (the sources as tuned, for the ranker's training, or as refitted, for evaluation)."""
        return {RETRIEVAL: self.logits(users),
                **{name: source.scores(users, history) for name, source in fitted.items()}}
