"""Reference models every result is reported beside: bias-only and plain matrix factorisation.

Both are small and standard, so a reader can tell what the two-tower/rating-model pipeline adds.
Each exposes user and item vectors whose dot product orders movies, plus rating predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from movierec.core.arrays import Interactions
from movierec.models.torch_runtime import batches


@dataclass
class Factorized:
    """Scores are ``user_vecs @ item_vecs.T``; ``predict`` gives star ratings."""

    user_vecs: np.ndarray
    item_vecs: np.ndarray
    global_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        pred = self.global_mean + self.user_bias[users] + self.item_bias[items]
        if self.user_factors is not None:
            pred = pred + (self.user_factors[users] * self.item_factors[items]).sum(axis=1)
        return np.clip(pred, 0.5, 5.0)


def biases(train: Interactions, *, reg: float = 10.0, iterations: int = 10) -> Factorized:
    """Global mean + regularised user and item biases, fitted by alternating least squares
    (Koren's baseline predictor). Ranks movies by item bias: popularity by quality."""
    users, items, ratings, n_users, n_items = train.users, train.items, train.stars(), train.n_users, train.n_items
    mu = float(ratings.mean())
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    n_u = np.bincount(users, minlength=n_users)
    n_i = np.bincount(items, minlength=n_items)
    for _ in range(iterations):
        bi = np.bincount(items, weights=ratings - mu - bu[users], minlength=n_items) / (n_i + reg)
        bu = np.bincount(users, weights=ratings - mu - bi[items], minlength=n_users) / (n_u + reg)
    return Factorized(user_vecs=np.ones((n_users, 1), np.float32), item_vecs=bi[:, None].astype(np.float32),
                      global_mean=mu, user_bias=bu, item_bias=bi)


def matrix_factorization(train: Interactions, *, dim: int = 32, epochs: int = 20, lr: float = 5e-3,
                         weight_decay: float = 0.1, batch_size: int = 1024, seed: int = 42) -> Factorized:
    """Biased matrix factorisation (Funk SVD) trained on squared error with Adam and L2 on the
    parameters a batch touches. Ranks movies by item bias + factor dot product."""
    users, items, ratings, n_users, n_items = train.users, train.items, train.stars(), train.n_users, train.n_items
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(n_users, dim) * 0.05)
    q = torch.nn.Parameter(torch.randn(n_items, dim) * 0.05)
    bu = torch.nn.Parameter(torch.zeros(n_users))
    bi = torch.nn.Parameter(torch.zeros(n_items))
    mu = float(ratings.mean())
    opt = torch.optim.Adam([p, q, bu, bi], lr=lr)
    u_t, i_t, r_t = torch.as_tensor(users), torch.as_tensor(items), torch.as_tensor(ratings, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in batches(len(u_t), batch_size, gen):
            u, i = u_t[idx], i_t[idx]
            pred = mu + bu[u] + bi[i] + (p[u] * q[i]).sum(1)
            reg = weight_decay * ((p[u] ** 2).sum(1) + (q[i] ** 2).sum(1) + bu[u] ** 2 + bi[i] ** 2).mean()
            loss = ((pred - r_t[idx]) ** 2).mean() + reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    P, Q, BU, BI = (t.detach().numpy() for t in (p, q, bu, bi))
    user_vecs = np.hstack([P, np.ones((n_users, 1), np.float32)])
    item_vecs = np.hstack([Q, BI[:, None]])
    return Factorized(user_vecs=user_vecs, item_vecs=item_vecs, global_mean=mu, user_bias=BU, item_bias=BI,
                      user_factors=P, item_factors=Q)
