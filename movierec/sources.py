"""Candidate sources beside the retrieval model: EASEᴿ and implicit-feedback ALS.

Two-stage systems win by combining several candidate generators of different kinds; these two
are the strongest classical ones on MovieLens (``benchmarks/peers.py``), and both train in about
a second on ML-100K.

- **EASEᴿ** (Steck, 2019): an item-item linear model in closed form. Over the binary user x
  movie matrix ``X`` of training ratings, ``P = (XᵀX + λI)⁻¹`` and ``B = I - P / diag(P)`` (zero
  diagonal); a user's scores are ``x_u B``, so a new user with a history is scored the same way.
  ``B`` is dense, ``n²`` floats: only the ``ease_max_items`` most-rated movies take part (every
  movie of ML-100K and ML-1M; at ML-20M size the 10,000 most rated of 27k, which carry almost all
  ratings); the others get no EASE score and reach the candidates through the other sources.
- **ALS** (Hu, Koren, Volinsky, 2008): the ``implicit`` library's AlternatingLeastSquares on the
  same matrix (confidence ``alpha`` for a rated movie, 1 for the others). A history is folded in
  with the same least-squares step ALS takes for a user (:meth:`AlsModel.user_vector`), so
  serving needs no ``implicit``.

Each source's hyper-parameters are chosen on the retrieval model's validation pairs (carved from
train, never test) by nDCG@10 of the source alone (:func:`fit_sources`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from movierec import arrays, metrics
from movierec.settings import SourcesConfig

if TYPE_CHECKING:  # scipy is a training dependency: serving folds histories in with numpy alone
    import scipy.sparse as sp


def interactions(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """The binary user x movie matrix of (user, movie) pairs (repeats count once)."""
    import scipy.sparse as sp

    x = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    x.data[:] = 1.0
    return x


@dataclass
class EaseModel:
    items: np.ndarray  # dense movie indices EASE covers, ascending
    weights: np.ndarray  # float32 [len(items), len(items)], zero diagonal
    lam: float
    n_items: int

    def scores(self, history: sp.csr_matrix) -> np.ndarray:
        """[rows of ``history``, n_items] scores; movies outside ``items`` score 0, the score of a
        movie unrelated to the history (so the ranker neither favours nor buries them)."""
        out = np.zeros((history.shape[0], self.n_items), np.float32)
        out[:, self.items] = np.asarray(history[:, self.items] @ self.weights)
        return out


def fit_ease(x: sp.csr_matrix, lam: float, max_items: int) -> EaseModel:
    counts = np.asarray(x.sum(0)).ravel()
    items = np.sort(np.argsort(-counts, kind="stable")[:max_items])
    sub = x[:, items]
    gram = (sub.T @ sub).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    weights = -p / np.diag(p)
    weights[np.diag_indices_from(weights)] = 0.0
    return EaseModel(items, weights.astype(np.float32), lam, x.shape[1])


@dataclass
class AlsModel:
    user_factors: np.ndarray  # float32 [n_users, factors]
    item_factors: np.ndarray  # float32 [n_items, factors]
    regularization: float
    alpha: float

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    @cached_property
    def _gram(self) -> np.ndarray:
        """``YᵀY + λI``, the part of every fold-in that does not depend on the history."""
        y = self.item_factors.astype(np.float64)
        return y.T @ y + self.regularization * np.eye(y.shape[1])

    def user_vector(self, history: np.ndarray) -> np.ndarray:
        """Factors for a user known only by the movies ``history`` they rated: ALS's own user step
        as ``implicit`` takes it, confidence ``alpha`` for a rated movie and 1 for the others
        (preference 0): ``(YᵀY + λI + (alpha - 1) Y_hᵀY_h)⁻¹ alpha Y_hᵀ1``."""
        yh = self.item_factors[history].astype(np.float64)
        gram = self._gram + (self.alpha - 1) * yh.T @ yh
        return np.linalg.solve(gram, self.alpha * yh.sum(0)).astype(np.float32)


def fit_als(x: sp.csr_matrix, factors: int, regularization: float, alpha: float, iterations: int,
            seed: int) -> AlsModel:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads under it only contend
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                        iterations=iterations, random_state=seed)
        model.fit(x, show_progress=False)
    return AlsModel(np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32),
                    regularization, alpha)


@dataclass
class Sources:
    """Fitted sources by name (None: switched off)."""

    ease: EaseModel | None
    als: AlsModel | None

    def scores(self, users: np.ndarray, history: sp.csr_matrix) -> dict[str, np.ndarray]:
        """[len(users), n_items] scores of each source for ``users`` (rows of ``history``: each
        user's training movies, which EASE reads)."""
        out = {}
        if self.ease is not None:
            out["ease"] = self.ease.scores(history)
        if self.als is not None:
            out["als"] = self.als.scores(users)
        return out


def _val_ndcg(scores: np.ndarray, users: np.ndarray, seen: sp.csr_matrix, keys: np.ndarray, n_items: int) -> float:
    rows, cols = arrays.csr_rows(seen.indptr, seen.indices, users)
    s = scores.copy()
    s[rows, cols] = -np.inf
    lists = arrays.top_k(s, 10)
    n_relevant = np.bincount(keys // n_items, minlength=seen.shape[0])[users]
    return metrics.ndcg_at_k(metrics.hits(lists, users, keys, n_items), n_relevant, 10)


@dataclass
class SourceModels:
    """Each source with the hyper-parameters that scored best on the validation pairs, fitted
    without them (``tuning``: what the ranker is tuned on, over the same pairs) and with them
    (``final``: what evaluation and serving use), and what was chosen."""

    tuning: Sources
    final: Sources
    chosen: dict[str, dict]  # source -> {"params": ..., "val_ndcg": ...}


def _best(grid: list, fit, score) -> tuple[object, object, float]:
    """(params, model, score) of the best of ``grid`` (one model kept in memory at a time)."""
    best = (None, None, -1.0)
    for params in grid:
        model = fit(params)
        value = score(model)
        if value > best[2]:
            best = (params, model, value)
    return best


def fit_sources(users: np.ndarray, items: np.ndarray, val_users: np.ndarray, val_items: np.ndarray,
                n_users: int, n_items: int, config: SourcesConfig, seed: int) -> SourceModels:
    """:class:`SourceModels` from the fit pairs (``users``, ``items``) and the validation pairs.

    The grids are searched on the ratings of at most ``config.search_users`` users, the validation
    users among them (every user of ML-100K and ML-1M): at ML-20M size a dozen ALS fits on every
    rating would take most of an hour. EASE's λ, which weighs against counts that grow with the
    number of users, is then scaled by how many more users the full fit has."""
    fit = interactions(users, items, n_users, n_items)
    fit_users, targets = np.unique(users), np.unique(val_users)
    sampled = len(fit_users) > config.search_users
    if sampled:  # the validation users (a sample of them, if too many), then others up to the cap
        rng = np.random.default_rng(seed)
        if len(targets) > config.search_users:
            targets = np.sort(rng.choice(targets, config.search_users, replace=False))
        others = np.setdiff1d(fit_users, targets)
        search_users = np.union1d(targets, rng.choice(others, min(len(others), config.search_users - len(targets)),
                                                      replace=False))
        keep = np.zeros(n_users, bool)
        keep[search_users] = True
        search = interactions(users[keep[users]], items[keep[users]], n_users, n_items)
        in_val = keep[val_users]
        keys = metrics.relevant_keys(val_users[in_val], val_items[in_val], n_items)
    else:
        search, keys = fit, metrics.relevant_keys(val_users, val_items, n_items)
    growth = len(fit_users) / len(search_users) if sampled else 1.0
    history = search[targets]
    chosen: dict[str, dict] = {}
    tuning: dict[str, object] = {"ease": None, "als": None}
    final: dict[str, object] = {"ease": None, "als": None}
    full = interactions(np.concatenate([users, val_users]), np.concatenate([items, val_items]), n_users, n_items)
    if config.ease:
        lam, model, score = _best(list(config.ease_lambdas), lambda v: fit_ease(search, v, config.ease_max_items),
                                  lambda m: _val_ndcg(m.scores(history), targets, search, keys, n_items))
        lam *= growth
        chosen["ease"] = {"params": {"lambda": lam}, "val_ndcg": score}
        tuning["ease"] = fit_ease(fit, lam, config.ease_max_items) if sampled else model
        final["ease"] = fit_ease(full, lam, config.ease_max_items)
    if config.als:
        grid = list(itertools.product(config.als_factors, config.als_regularization, config.als_alpha))
        (f, r, a), model, score = _best(grid, lambda p: fit_als(search, *p, config.als_iterations, seed),
                                        lambda m: _val_ndcg(m.scores(targets), targets, search, keys, n_items))
        chosen["als"] = {"params": {"factors": f, "regularization": r, "alpha": a}, "val_ndcg": score}
        tuning["als"] = fit_als(fit, f, r, a, config.als_iterations, seed) if sampled else model
        final["als"] = fit_als(full, f, r, a, config.als_iterations, seed)
    return SourceModels(Sources(tuning["ease"], tuning["als"]), Sources(final["ease"], final["als"]), chosen)
