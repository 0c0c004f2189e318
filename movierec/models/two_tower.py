"""The two-tower retrieval model and its loss.

Each tower maps a user (id + demographics) or a movie (id + genres + title + year) to a unit
vector; a user's affinity for a movie is their dot product, so retrieval is a nearest-neighbour
search. Training uses in-batch softmax: the other movies in a batch are the negatives. Because
popular movies appear as in-batch negatives more often, their logits are corrected by the log of
their sampling probability (logQ correction, Yi et al. 2019); without it the model learns to
under-rank popular movies. ``movierec.training.retrieval`` trains it with Ray Train.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from movierec.core.settings import RetrievalConfig
from movierec.models.layers import ItemEncoder, UserEncoder, mlp
from movierec.models.torch_runtime import (
    features_from_state,
)


class TwoTower(nn.Module):
    def __init__(self, sizes: dict[str, int], user_feats, item_feats, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.user = UserEncoder(sizes, user_feats, dim)
        self.item = ItemEncoder(sizes, item_feats, dim)
        self.user_mlp = mlp([self.user.out_dim, hidden, dim])
        self.item_mlp = mlp([self.item.out_dim, hidden, dim])

    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.user_mlp(self.user(users, exclude)), dim=-1)

    def item_vectors(self, items: torch.Tensor, ids: bool = True) -> torch.Tensor:
        return F.normalize(self.item_mlp(self.item(items, ids)), dim=-1)

    def content_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """The movies' vectors from their genres, title and year alone: how the model scores a
        movie nobody has rated, whose id embedding never trained (it stays at its small random
        start). Training with the id embedding dropped for a share of the pairs, so that the
        features alone learn to place a movie, ranked held-out movies worse on ML-100K's
        coldstart split (NDCG@10 0.246 at 25%, 0.235 at 50%, against 0.279 without; seed 42)."""
        return self.item_vectors(items, ids=False)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pairs: each positive movie is left out of its user's history (see UserEncoder)."""
        return self.user_vectors(users, exclude=items), self.item_vectors(items)

    @classmethod
    def from_state(cls, sizes: dict[str, int], cfg: RetrievalConfig, state: dict) -> TwoTower:
        user_feats, item_feats = features_from_state(state, "user."), features_from_state(state, "item.")
        model = cls(sizes, user_feats, item_feats, cfg.dim, cfg.hidden)
        model.load_state_dict(state)
        return model.eval()


def popularity_log_q(items: np.ndarray, n_items: int) -> torch.Tensor:
    """Log of each movie's share of the training pairs: the sampling probability that
    :func:`in_batch_loss` corrects for (movies never seen count as seen once)."""
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    return torch.as_tensor(np.log(np.maximum(counts, 1) / counts.sum()), dtype=torch.float32)


def in_batch_loss(u: torch.Tensor, v: torch.Tensor, items: torch.Tensor, log_q: torch.Tensor, *, temperature: float,
                  negatives: int | None = None) -> torch.Tensor:
    """Sampled softmax with logQ correction: each pair's positive against shared negatives, the
    first ``negatives`` movies of the batch (all of it by default). Batches are shuffled, so those
    are a sample of the training pairs' movies, as logQ assumes. Copies of a pair's own movie among
    the negatives are masked. Fixing ``negatives`` fixes the softmax's cost per pair: over the whole
    batch it grows with the batch (at 4,096 pairs a step cost 20x the 1,024 one's, for 4x pairs)."""
    n = len(items) if negatives is None else min(negatives, len(items))
    positive = (u * v).sum(-1, keepdim=True) / temperature - log_q[items][:, None]
    shared = u @ v[:n].T / temperature - log_q[items[:n]][None, :]
    shared = shared.masked_fill(items[:, None] == items[None, :n], float("-inf"))
    logits = torch.cat([positive, shared], 1)
    return F.cross_entropy(logits.float(), torch.zeros(len(items), dtype=torch.long, device=items.device))
