"""Candidate sources beside the retrieval model: one interface, a registry, and the sources.

Two-stage systems win by combining several candidate generators of different kinds. Each source
here is one :class:`CandidateSource` subclass, registered by name (:data:`SOURCES`): it fits
itself on the training interactions over its own grid of settings, scores users, folds in a new
user's history, and writes itself to (and checks itself when read back from) a bundle's arrays.
The ranker's features, the bundle, serving and evaluation follow from the sources fitted, so a new
source is one class here, its fields in ``SourcesConfig`` (a switch named as the source, its
grid) and its tests; a bundle naming a source this code does not know is refused on load.

- **EASEᴿ** (Steck, 2019): an item-item linear model in closed form. Over the binary user x
  movie matrix ``X`` of training ratings, ``P = (XᵀX + λI)⁻¹`` and ``B = I - P / diag(P)`` (zero
  diagonal); a user's scores are ``x_u B``, so a new user with a history is scored the same way.
  ``B`` is dense, ``n²`` floats: only the ``ease_max_items`` most-rated movies take part (every
  movie of ML-100K and ML-1M; at ML-20M size the 10,000 most rated of 27k, which carry almost all
  ratings); the others get no EASE score and reach the candidates through the other sources.
- **ALS** (Hu, Koren, Volinsky, 2008): the ``implicit`` library's AlternatingLeastSquares on the
  same matrix (confidence ``alpha`` for a rated movie, 1 for the others). A history is folded in
  with the same least-squares step ALS takes for a user (:meth:`Als.user_vector`), so serving
  needs no ``implicit``.
- **RP3beta** (Paudel et al., 2017): a random walk item -> user -> item over the same matrix,
  each step's transition probabilities raised to ``alpha`` and the arrival movie's score divided
  by its popularity to the power ``beta`` (less weight to what everyone rated). Item-item like
  EASE, over the ``rp3beta_max_items`` most-rated movies. Off by default (``--rp3beta``): on
  ML-100K it widens the union but the two-stage lists are no better (README, "Adding a
  candidate source").

Each source's hyper-parameters are chosen on the retrieval model's validation pairs (carved from
train, never test) by nDCG@10 of the source alone (:func:`fit_sources`).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from movierec.core import arrays, metrics
from movierec.core.settings import SourcesConfig
from movierec.errors import BundleError

if TYPE_CHECKING:  # scipy is a training dependency: serving folds histories in with numpy alone
    import scipy.sparse as sp


def interactions(pairs: arrays.Interactions) -> sp.csr_matrix:
    """The binary user x movie matrix of ``pairs`` (repeats count once; stars are not read)."""
    import scipy.sparse as sp

    x = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs.users, pairs.items)),
                      shape=(pairs.n_users, pairs.n_items))
    x.data[:] = 1.0
    return x


class CandidateSource(ABC):
    """What every candidate source is: fitted on training interactions, it scores users, folds a
    new user's history in, and travels in a bundle as named arrays plus JSON-able settings.

    A subclass sets ``name`` (its key in the registry, the bundle and the ranker's features; also
    the name of its on/off field in ``SourcesConfig``) and ``label`` (its row in reports), and is
    added to :data:`SOURCES` with :func:`register`."""

    name: ClassVar[str]
    label: ClassVar[str]

    @classmethod
    def enabled(cls, config: SourcesConfig) -> bool:
        """Whether the settings switch this source on (the ``SourcesConfig`` field of its name)."""
        return bool(getattr(config, cls.name))

    @classmethod
    @abstractmethod
    def grid(cls, config: SourcesConfig) -> list[dict]:
        """The hyper-parameter settings to search on the validation pairs, as keyword dicts."""

    @classmethod
    def rescale(cls, params: dict, growth: float) -> dict:
        """``params`` chosen on a sample of users, for a fit on ``growth`` times as many (most
        settings do not depend on the number of users: unchanged)."""
        return params

    @classmethod
    @abstractmethod
    def fit(cls, x: sp.csr_matrix, params: dict, config: SourcesConfig, seed: int) -> CandidateSource:
        """The source fitted on the binary user x movie matrix ``x`` with one of its ``grid``'s settings."""

    @abstractmethod
    def scores(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """[len(users), n_items] scores of the training users ``users``; ``history`` holds their
        training movies (a row per user), for sources that score from the history."""

    @abstractmethod
    def fold_in(self, movies: np.ndarray) -> np.ndarray:
        """[n_items] scores of someone known only by the (distinct) ``movies`` they rated."""

    def user_scores(self, user: int | None, movies: np.ndarray) -> np.ndarray:
        """[n_items] scores for serving: of training user ``user`` (None: a new user) who rated
        ``movies``. A source keeping per-user state overrides this; the others fold the history in."""
        return self.fold_in(movies)

    @abstractmethod
    def to_arrays(self, user_data: bool) -> tuple[dict[str, np.ndarray], dict]:
        """(named arrays, JSON-able settings) that :meth:`from_arrays` reads back; ``user_data``
        False leaves out every array with a row per user (a bundle published without users)."""

    @classmethod
    @abstractmethod
    def from_arrays(cls, values: Mapping[str, np.ndarray], info: dict, n_items: int,
                    n_users: int | None) -> CandidateSource:
        """The source :meth:`to_arrays` wrote, for ``n_items`` movies and ``n_users`` users (None:
        a bundle without per-user data), checked: raises BundleError saying what is wrong (a
        missing or unexpected array, a shape that does not fit the catalogue, a NaN, settings
        :meth:`check_settings` refuses)."""

    @classmethod
    def check_settings(cls, info: object) -> dict:
        """``info``, the settings :meth:`to_arrays` wrote (model.json's), checked: a JSON object
        (a source with settings checks their values too); BundleError naming the source otherwise."""
        cls.require(isinstance(info, dict), f"settings are not a JSON object (got {info!r})")
        return info

    @classmethod
    def only(cls, values: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> None:
        """Refuse arrays beside ``keys`` (what :meth:`to_arrays` writes): the loader refuses arrays
        of sources model.json does not name, and a known source's must not be ignored either."""
        unexpected = sorted(set(values) - set(keys))
        cls.require(not unexpected, f"unexpected array{'s' * (len(unexpected) > 1)} "
                    f"{', '.join(map(repr, unexpected))} (expected {', '.join(map(repr, keys))})")

    @classmethod
    def require(cls, ok: bool, what: str) -> None:
        """A load-time check of this source's arrays: BundleError naming the source when ``ok`` fails."""
        if not ok:
            raise BundleError(f"source {cls.name!r}: {what}")

    @classmethod
    def array(cls, values: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
        """``values[key]``, present, of ``ndim`` dimensions and finite (else BundleError)."""
        cls.require(key in values, f"no {key!r} array")
        value = values[key]
        cls.require(value.ndim == ndim, f"{key!r} has {value.ndim} dimensions, not {ndim}")
        cls.require(value.dtype.kind in "iuf", f"{key!r} is not numbers ({value.dtype})")
        cls.require(bool(np.isfinite(value).all()), f"NaN or infinite values in {key!r}")
        return value


S = TypeVar("S", bound=type[CandidateSource])
SOURCES: dict[str, type[CandidateSource]] = {}  # name -> class, in the order of the ranker's features


def register(cls: S) -> S:
    """Class decorator adding a source to :data:`SOURCES` (a name taken twice is a programming error)."""
    if cls.name in SOURCES:
        raise ValueError(f"candidate source {cls.name!r} is registered twice")
    SOURCES[cls.name] = cls
    return cls


def source_class(name: str) -> type[CandidateSource]:
    """The registered source called ``name``; BundleError if this version of movierec has none."""
    if name not in SOURCES:
        raise BundleError(f"unknown candidate source {name!r}: this movierec knows {', '.join(SOURCES)} "
                          "(install the movierec version that published the model)")
    return SOURCES[name]


def _most_rated(x: sp.csr_matrix, max_items: int) -> np.ndarray:
    """The ``max_items`` movies with the most ratings in ``x`` (ties to the lower index), ascending."""
    counts = np.asarray(x.sum(0)).ravel()
    return np.sort(np.argsort(-counts, kind="stable")[:max_items])


@dataclass
class ItemItem(CandidateSource):
    """A source scoring a user ``x_u W``: a dense item-item matrix ``W`` over the movies it covers
    (``items``); the other movies score 0, the score of a movie unrelated to the history (so the
    ranker neither favours nor buries them)."""

    items: np.ndarray  # dense movie indices covered, ascending
    weights: np.ndarray  # float32 [len(items), len(items)]
    n_items: int

    def scores(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        out = np.zeros((history.shape[0], self.n_items), np.float32)
        out[:, self.items] = np.asarray(history[:, self.items] @ self.weights)
        return out

    def fold_in(self, movies: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n_items, np.float32)
        covered = np.searchsorted(self.items, movies)
        inside = covered < len(self.items)
        covered = covered[inside & (self.items[np.minimum(covered, len(self.items) - 1)] == movies)]
        out[self.items] = self.weights[covered].sum(axis=0)
        return out

    def to_arrays(self, user_data: bool) -> tuple[dict[str, np.ndarray], dict]:
        return {"items": self.items, "weights": self.weights}, {}

    @classmethod
    def from_arrays(cls, values: Mapping[str, np.ndarray], info: dict, n_items: int,
                    n_users: int | None) -> ItemItem:
        cls.only(values, ("items", "weights"))
        items, weights = cls.array(values, "items", 1), cls.array(values, "weights", 2)
        m = len(items)
        cls.require(weights.shape == (m, m), f"weights of shape {weights.shape} for {m} covered movies")
        cls.require(m == 0 or (items.dtype.kind in "iu" and bool((np.diff(items) > 0).all()) and items[0] >= 0
                               and items[-1] < n_items), f"covered movies are not sorted, distinct movies of "
                    f"the {n_items} in the catalogue")
        return cls(items, weights.astype(np.float32), n_items)


def fit_ease(x: sp.csr_matrix, lam: float, max_items: int) -> Ease:
    """EASEᴿ's closed form over the ``max_items`` most-rated movies of ``x``."""
    items = _most_rated(x, max_items)
    sub = x[:, items]
    gram = (sub.T @ sub).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    weights = -p / np.diag(p)
    weights[np.diag_indices_from(weights)] = 0.0
    return Ease(items, weights.astype(np.float32), x.shape[1])


@register
@dataclass
class Ease(ItemItem):
    name: ClassVar[str] = "ease"
    label: ClassVar[str] = "EASEᴿ"

    @classmethod
    def grid(cls, config: SourcesConfig) -> list[dict]:
        return [{"lambda": lam} for lam in config.ease_lambdas]

    @classmethod
    def rescale(cls, params: dict, growth: float) -> dict:
        """λ weighs against co-occurrence counts, which grow with the number of users."""
        return {"lambda": params["lambda"] * growth}

    @classmethod
    def fit(cls, x: sp.csr_matrix, params: dict, config: SourcesConfig, seed: int) -> Ease:
        return fit_ease(x, params["lambda"], config.ease_max_items)


@register
@dataclass
class Als(CandidateSource):
    name: ClassVar[str] = "als"
    label: ClassVar[str] = "ALS"

    user_factors: np.ndarray | None  # float32 [n_users, factors]; None in a bundle without per-user data
    item_factors: np.ndarray  # float32 [n_items, factors]
    regularization: float
    alpha: float

    @classmethod
    def grid(cls, config: SourcesConfig) -> list[dict]:
        return [{"factors": f, "regularization": r, "alpha": a} for f, r, a in
                itertools.product(config.als_factors, config.als_regularization, config.als_alpha)]

    @classmethod
    def fit(cls, x: sp.csr_matrix, params: dict, config: SourcesConfig, seed: int) -> Als:
        return fit_als(x, params["factors"], params["regularization"], params["alpha"],
                       iterations=config.als_iterations, seed=seed)

    def scores(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
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

    def fold_in(self, movies: np.ndarray) -> np.ndarray:
        return self.item_factors @ self.user_vector(movies)

    def user_scores(self, user: int | None, movies: np.ndarray) -> np.ndarray:
        """A training user's own factors (what evaluation scores them with); a new user's folded in."""
        if user is None or self.user_factors is None:
            return self.fold_in(movies)
        return self.item_factors @ self.user_factors[user]

    def to_arrays(self, user_data: bool) -> tuple[dict[str, np.ndarray], dict]:
        values = {"items": self.item_factors}
        if user_data:
            values["users"] = self.user_factors
        return values, {"regularization": self.regularization, "alpha": self.alpha}

    @classmethod
    def from_arrays(cls, values: Mapping[str, np.ndarray], info: dict, n_items: int, n_users: int | None) -> Als:
        items = cls.array(values, "items", 2)
        cls.require(len(items) == n_items, f"movie factors for {len(items)} movies, not the catalogue's {n_items}")
        users = None
        if n_users is not None:
            users = cls.array(values, "users", 2)
            cls.require(users.shape == (n_users, items.shape[1]), f"user factors of shape {users.shape}, not "
                        f"({n_users}, {items.shape[1]}) for the bundle's users and the movie factors")
        else:
            cls.require("users" not in values, "user factors in a bundle without per-user data")
        cls.only(values, ("items", "users"))
        fold_in = cls.check_settings(info)
        return cls(users, items.astype(np.float32), float(fold_in["regularization"]), float(fold_in["alpha"]))

    @classmethod
    def check_settings(cls, info: object) -> dict:
        """What folds a history in: ``regularization`` >= 0 and ``alpha`` > 0, finite numbers."""
        settings = super().check_settings(info)
        fold_in = {k: settings.get(k) for k in ("regularization", "alpha")}
        cls.require(all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) and v >= 0
                        for v in fold_in.values()) and fold_in["alpha"] > 0,
                    f"no regularisation >= 0 and alpha > 0 to fold a history in (got {fold_in})")
        return fold_in


def fit_als(x: sp.csr_matrix, factors: int, regularization: float, alpha: float, *, iterations: int,
            seed: int) -> Als:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads under it only contend
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                        iterations=iterations, random_state=seed)
        model.fit(x, show_progress=False)
    return Als(np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32),
               regularization, alpha)


def fit_rp3beta(x: sp.csr_matrix, alpha: float, beta: float, max_items: int) -> RP3beta:
    """RP3beta's item-item matrix over the ``max_items`` most-rated movies of ``x``:
    ``W = P_iu^alpha P_ui^alpha`` (row-stochastic movie -> user and user -> movie transitions of
    the binary matrix, each probability raised to ``alpha``), column ``j`` divided by movie ``j``'s
    rating count to the power ``beta``, zero diagonal. A user's transitions are over all the movies
    they rated, covered or not."""
    items = _most_rated(x, max_items)
    user_degree = np.asarray(x.sum(1)).ravel()
    sub = x[:, items].tocsr().astype(np.float64)
    item_degree = np.asarray(sub.sum(0)).ravel()
    p_ui = sub.multiply(np.divide(1.0, user_degree, out=np.zeros_like(user_degree, np.float64),
                                  where=user_degree > 0)[:, None]).tocsr()
    p_iu = sub.T.multiply(np.divide(1.0, item_degree, out=np.zeros_like(item_degree),
                                    where=item_degree > 0)[:, None]).tocsr()
    p_ui.data **= alpha
    p_iu.data **= alpha
    weights = (p_iu @ p_ui).toarray()
    weights *= np.divide(1.0, item_degree ** beta, out=np.zeros_like(item_degree), where=item_degree > 0)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return RP3beta(items, weights.astype(np.float32), x.shape[1])


@register
@dataclass
class RP3beta(ItemItem):
    name: ClassVar[str] = "rp3beta"
    label: ClassVar[str] = "RP3beta"

    @classmethod
    def grid(cls, config: SourcesConfig) -> list[dict]:
        return [{"alpha": a, "beta": b} for a, b in itertools.product(config.rp3beta_alphas, config.rp3beta_betas)]

    @classmethod
    def fit(cls, x: sp.csr_matrix, params: dict, config: SourcesConfig, seed: int) -> RP3beta:
        return fit_rp3beta(x, params["alpha"], params["beta"], config.rp3beta_max_items)


Sources = dict[str, CandidateSource]  # fitted sources by name, in the registry's order (switched off: absent)


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


def _best(grid: list, fit: Callable, score: Callable) -> tuple[object, object, float]:
    """(params, model, score) of the best of ``grid`` (one model kept in memory at a time)."""
    best = (None, None, -1.0)
    for params in grid:
        model = fit(params)
        value = score(model)
        if value > best[2]:
            best = (params, model, value)
    return best


def fit_sources(fit: arrays.Interactions, val: arrays.Interactions, config: SourcesConfig, *,
                seed: int) -> SourceModels:
    """:class:`SourceModels` of every source the settings switch on, from the ``fit`` pairs and
    the validation pairs ``val`` (both in the same user and movie index spaces).

    The grids are searched on the ratings of at most ``config.search_users`` users, the validation
    users among them (every user of ML-100K and ML-1M): at ML-20M size a dozen ALS fits on every
    rating would take most of an hour. Settings that depend on the number of users (EASE's λ) are
    then rescaled by how many more users the full fit has (:meth:`CandidateSource.rescale`)."""
    if (fit.n_users, fit.n_items) != (val.n_users, val.n_items):
        raise ValueError(f"fit_sources: the fit pairs index {fit.n_users} users x {fit.n_items} movies, the "
                         f"validation pairs {val.n_users} x {val.n_items}: expected the same index spaces")
    n_users, n_items = fit.n_users, fit.n_items
    fit_matrix = interactions(fit)
    fit_users, targets = np.unique(fit.users), np.unique(val.users)
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
        search = interactions(fit.subset(keep[fit.users]))
        in_val = keep[val.users]
        keys = metrics.relevant_keys(val.users[in_val], val.items[in_val], n_items)
    else:
        search, keys = fit_matrix, metrics.relevant_keys(val.users, val.items, n_items)
    growth = len(fit_users) / len(search_users) if sampled else 1.0
    history = search[targets]
    full = interactions(arrays.Interactions(np.concatenate([fit.users, val.users]),
                                            np.concatenate([fit.items, val.items]), n_users, n_items))
    models = SourceModels({}, {}, {})
    for name, cls in SOURCES.items():
        if not cls.enabled(config):
            continue
        params, model, score = _best(cls.grid(config), lambda p, c=cls: c.fit(search, p, config, seed),
                                     lambda m: _val_ndcg(m.scores(targets, history), targets, search, keys, n_items))
        params = cls.rescale(params, growth)
        models.chosen[name] = {"params": params, "val_ndcg": score}
        models.tuning[name] = cls.fit(fit_matrix, params, config, seed) if sampled else model
        models.final[name] = cls.fit(full, params, config, seed)
    return models
