"""Recommendations from a trained bundle, with no Metaflow, Ray or training code at run time.

    from movierec import Recommender
    rec = Recommender.load()             # the bundle packaged inside this installed wheel
    rec.recommend(1, k=10)               # each source's 100 best unseen movies, ordered by the ranker
    rec.recommend_for_history([(50, 5), (181, 4)], k=10)
    rec.predict_rating(1, 50); rec.similar_movies(50, k=10)

Everything runs on numpy and Annoy: the rating model too, as its folded tables (``rating.npz``,
``movierec.rater``). ``backend="onnx"`` runs the bundle's ONNX graph instead (``pip install
'movierec[onnx]'``), ``backend="torch"`` the training code's model (an installation with torch);
all three agree within 1e-4 (checked when the bundle was published, and by the tests). A model of
implicit-only data has no rating model: recommendations carry no predicted rating, and asking for
one is a :class:`NoRatingModelError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from movierec.bundle import bundle_of_run, non_finite, read_bundle
from movierec.errors import (
    BundleError,
    NoRatingModelError,
    NoUserDataError,
    RecommenderError,
    UnknownMovieError,
    UnknownUserError,
)
from movierec.index import Index
from movierec.ranker import FEATURES, IMPLICIT_FEATURES, Ranker, Rate, feature_values, union
from movierec.rater import RatingTables, onnx_session
from movierec.settings import IndexSettings
from movierec.sources import AlsModel

__all__ = ["BundleError", "NoRatingModelError", "NoUserDataError", "Recommendation", "Recommender", "RecommenderError",
           "UnknownMovieError", "UnknownUserError"]
MAX_K = 1000
BACKENDS = ("numpy", "onnx", "torch")


@dataclass
class Recommendation:
    movie_id: int
    title: str
    genres: list[str]
    year: int | None
    score: float  # ordering score (higher is better); for similar movies, the cosine similarity
    predicted_rating: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _lookup(ids: np.ndarray, raw: int, error: type[RecommenderError]) -> int:
    pos = int(np.searchsorted(ids, raw))
    if pos >= len(ids) or ids[pos] != raw:
        raise error(raw)
    return pos


def rating_backend(files: dict[str, bytes], info: dict, shape: tuple[int, int], choice: str = "numpy") -> Rate:
    """``rate(user indices, movie indices)`` giving star ratings, with the runtime ``choice`` names:
    numpy (``rating.npz``), onnxruntime (``ranking.onnx``) or torch (``ranking.pt``; the training
    side's model, for installations with the ``train`` extra). The tables and the torch model must
    be for ``shape`` (users, movies); the graph is probed at its corners by the caller."""
    if choice == "numpy":
        tables = RatingTables.from_bytes(files["rating.npz"])
        _require(tables.shape == shape, "the rating model is for another number of users or movies")
        return tables
    if choice == "onnx":
        if "ranking.onnx" not in files:
            raise RecommenderError("backend 'onnx': this bundle has no ranking.onnx (the model did not export)")
        try:
            graph = onnx_session(files["ranking.onnx"])
        except ImportError:
            raise RecommenderError("backend 'onnx' needs onnxruntime: pip install 'movierec[onnx]'") from None
        return lambda u, i: graph.run(None, {"users": np.asarray(u, np.int64), "items": np.asarray(i, np.int64)})[0]
    if choice == "torch":
        try:  # torch and what the training code imports with it (pyarrow...): the train extra
            import torch

            from movierec.nn import state_from_bytes
            from movierec.ranking import RatingModel
        except ImportError as exc:
            raise RecommenderError(f"backend 'torch' needs the training code's packages ({exc.name} is missing): "
                                   "pip install 'movierec[train]'") from None
        torch.set_num_threads(1)  # single requests: thread start-up costs more than it saves
        folded = RatingModel.from_state(info["sizes"], info["ranking"], state_from_bytes(files["ranking.pt"])).fold()
        _require((len(folded.u), len(folded.v)) == shape, "the rating model is for another number of users or movies")

        def rate(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return folded(torch.as_tensor(users, dtype=torch.int64),
                              torch.as_tensor(items, dtype=torch.int64)).numpy()

        return rate
    raise RecommenderError(f"backend must be one of {', '.join(BACKENDS)}, got {choice!r}")


@contextlib.contextmanager
def _reading(origin: str, name: str) -> Iterator[None]:
    """Any failure while one bundle file is parsed becomes a BundleError naming that file: a
    checksum cannot vouch for a file the publisher wrote wrong, and a user should see which file
    of which bundle is at fault, not a numpy or torch traceback."""
    try:
        yield
    except RecommenderError:
        raise
    except Exception as exc:
        raise BundleError(f"{origin}: {name}: cannot be read ({type(exc).__name__}: {exc})") from exc


def _require(ok: bool, what: str) -> None:
    """Checks that a bundle's files agree with each other (inside ``_reading``, which names the
    file): a bad length or index would otherwise surface as an IndexError at query time."""
    if not ok:
        raise ValueError(what)


def _increasing(ids: np.ndarray) -> bool:
    """Ids are looked up by binary search: they must be sorted and distinct."""
    return bool(ids.ndim == 1 and (np.diff(ids) > 0).all())


class Recommender:
    """A loaded bundle. Thread-compatible for reads; load once, query many times."""

    def __init__(self, info: dict, files: dict[str, bytes], origin: str = "bundle", backend: str = "numpy"):
        """``info`` and ``files`` as :func:`movierec.bundle.read_bundle` returns them (checked)."""
        with _reading(origin, "model.json"):
            self.info = info
            self.temperature = float(info["retrieval"]["temperature"])
            self.user_data = bool(info["user_data"])
            self.implicit = info.get("implicit", False)
            _require(isinstance(self.implicit, bool), "implicit is not true or false")
            settings = IndexSettings(**info["index"])
        with _reading(origin, "vectors.npz"):
            vectors = np.load(io.BytesIO(files["vectors.npz"]), allow_pickle=False)
            self.item_vectors = vectors["items"]
            n_items, dim = self.item_vectors.shape
            # the rating model's movie part; implicit-only data has no rating model
            self.baselines = None if self.implicit else vectors["item_baselines"]
            _require(self.implicit or self.baselines.shape == (n_items,), f"baselines for other than {n_items} movies")
            self.popularity = vectors["popularity"]
            _require(self.popularity.shape == (n_items,), f"popularity for other than {n_items} movies")
            self.user_vectors = vectors["users"] if self.user_data else None
            _require(not self.user_data or self.user_vectors.shape[1:] == (dim,), "user and movie vectors differ")
            self.als_users = vectors["als_users"] if self.user_data and "als_users" in vectors else None
            diverged = non_finite({"items": self.item_vectors, "popularity": self.popularity,
                                   "item_baselines": self.baselines, "users": self.user_vectors,
                                   "als_users": self.als_users})
            _require(not diverged, f"NaN or infinite values in {', '.join(diverged)}")
        with _reading(origin, "ids.npz"):
            ids = np.load(io.BytesIO(files["ids.npz"]), allow_pickle=False)
            self.item_ids, self.years = ids["item_ids"], ids["years"]
            _require(self.item_ids.shape == self.years.shape == (n_items,), f"movie ids or years for other than "
                     f"{n_items} movies")
            _require(_increasing(self.item_ids), "movie ids are not sorted and distinct")
            if self.user_data:
                self.user_ids, self._rated_indptr, self._rated = ids["user_ids"], ids["rated_indptr"], ids["rated"]
                n_users, ptr = len(self.user_vectors), self._rated_indptr
                _require(self.user_ids.shape == (n_users,) and _increasing(self.user_ids),
                         f"user ids are not {n_users} sorted, distinct ids")
                _require(ptr.shape == (n_users + 1,) and ptr[0] == 0 and (np.diff(ptr) >= 0).all()
                         and ptr[-1] == len(self._rated), "rated_indptr does not index the rated movies")
                _require(((self._rated >= 0) & (self._rated < n_items)).all(), "a rated movie is not in the catalogue")
        with _reading(origin, "sources.npz"):
            second = np.load(io.BytesIO(files["sources.npz"]), allow_pickle=False)
            self.ease_items = second["ease_items"] if "ease_items" in second else None
            self.ease_weights = second["ease_weights"] if "ease_items" in second else None
            if self.ease_items is not None:
                m = len(self.ease_items)
                _require(self.ease_weights.shape == (m, m) and _increasing(self.ease_items)
                         and (self.ease_items < n_items).all() and self.ease_items[0] >= 0,
                         "EASE weights do not match the movies they cover")
            self.als_items = second["als_items"] if "als_items" in second else None
            diverged = non_finite({"ease_weights": self.ease_weights, "als_items": self.als_items})
            _require(not diverged, f"NaN or infinite values in {', '.join(diverged)}")
            _require(self.als_users is None or self.als_items is not None, "ALS user factors without movie factors")
            self.als = None  # what folds a history into ALS user factors
            if self.als_items is not None:
                _require(self.als_items.ndim == 2 and len(self.als_items) == n_items,
                         f"ALS factors for other than {n_items} movies")
                _require(not self.user_data or (self.als_users is not None and self.als_users.shape == (
                    len(self.user_vectors), self.als_items.shape[1])), "ALS user factors do not match the users")
                fold_in = info.get("sources", {}).get("als_fold_in", {})
                _require(set(fold_in) == {"regularization", "alpha"} and all(
                    isinstance(v, int | float) and np.isfinite(v) and v >= 0 for v in fold_in.values())
                    and fold_in["alpha"] > 0,
                    "ALS movie factors without the regularisation and alpha to fold a history in")
                self.als = AlsModel(np.zeros((0, self.als_items.shape[1]), np.float32), self.als_items,
                                    float(fold_in["regularization"]), float(fold_in["alpha"]))
        with _reading(origin, "model.json"):
            ranker = info["ranker"]
            mean, scale, weights = (np.asarray(ranker[key], np.float32) for key in ("mean", "scale", "weights"))
            features = IMPLICIT_FEATURES if self.implicit else FEATURES
            _require(tuple(ranker["features"]) == features and all(
                v.shape == (len(features),) for v in (mean, scale, weights)),
                "the ranker is not for this version's features" + (" of implicit-only data" if self.implicit else ""))
            _require(all(np.isfinite(v).all() for v in (mean, scale, weights)) and (scale > 0).all(),
                     "the ranker's weights or feature scales are not finite positive numbers")
            self.ranker = Ranker(features, mean, scale, weights, int(ranker["candidates"]), float("nan"))
            self.candidates = self.ranker.candidates
        with _reading(origin, "items.json"):
            items = json.loads(files["items.json"])
            self.titles, self.genres = items["titles"], items["genres"]
            _require(len(self.titles) == len(self.genres) == n_items, f"titles or genres for other than {n_items} "
                     "movies")
        if backend not in BACKENDS:
            raise RecommenderError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend, self._rate = "none", None
        if self.user_data and not self.implicit:
            with _reading(origin, {"numpy": "rating.npz", "onnx": "ranking.onnx", "torch": "ranking.pt"}[backend]):
                self.backend, self._rate = backend, rating_backend(files, info, (n_users, n_items), backend)
                corners = self._rate(np.array([0, n_users - 1]), np.array([0, n_items - 1]))
                _require(corners.shape == (2,) and np.isfinite(corners).all(), "the rating model does not rate the "
                         "first and last user and movie")
        with _reading(origin, "items.ann"):
            self.index = Index(files["items.ann"], dim, settings)
            _require(len(self.index) == n_items, f"{len(self.index)} indexed movies for {n_items} movie vectors")

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path | None = None, backend: str = "numpy") -> Recommender:
        """Load a bundle: the one packaged in this installation (default; in a source checkout,
        the latest successful local flow run), a bundle folder or zip, or a Metaflow run
        (``"RecommenderFlow/<run id>"``, any flow's ``"<flow>/<run id>"``, or a bare run id of
        RecommenderFlow; needs metaflow).
        ``backend`` runs the rating model on ``"numpy"`` (default), ``"onnx"`` or ``"torch"``."""
        if source is None:
            packaged = resources.files("movierec") / "bundle"
            if packaged.is_dir():
                return cls.from_source(Path(str(packaged)), backend)
            return cls.from_run(None, backend)
        path = Path(source)
        if path.exists():
            return cls.from_source(path, backend)
        if re.fullmatch(r"(\w+/)?\w+", str(source)):  # "<flow name>/<run id>" or a run id
            return cls.from_run(str(source), backend)
        raise BundleError(f"{source}: no such bundle file, folder or Metaflow run")

    @classmethod
    def from_source(cls, source: Path | bytes, backend: str = "numpy") -> Recommender:
        """A bundle zip (path or bytes) or folder, every file checked against its recorded sha256."""
        info, files = read_bundle(source)
        return cls(info, files, "bundle" if isinstance(source, bytes) else str(source), backend)

    @classmethod
    def from_bytes(cls, bundle: bytes, backend: str = "numpy") -> Recommender:
        return cls.from_source(bundle, backend)

    @classmethod
    def from_run(cls, run: str | None, backend: str = "numpy") -> Recommender:
        """The bundle published by a RecommenderFlow run (Metaflow must be installed); ``None``:
        the latest successful run in the Metaflow datastore this directory uses."""
        pathspec, blob = bundle_of_run(run)
        return cls(*read_bundle(blob), pathspec, backend)

    def describe(self) -> dict:
        """Which run, data and metrics the model comes from, and what runs its rating model."""
        import movierec

        return {"version": movierec.__version__, "backend": self.backend, "implicit": self.implicit,
                **{k: self.info.get(k) for k in ("flow", "run_id", "user_data", "dataset", "metrics", "exports")}}

    # ------------------------------------------------------------------ queries

    def _user(self, user_id: int) -> int:
        if not self.user_data:
            raise NoUserDataError()
        return _lookup(self.user_ids, int(user_id), UnknownUserError)

    def _movie(self, movie_id: int) -> int:
        return _lookup(self.item_ids, int(movie_id), UnknownMovieError)

    @staticmethod
    def _check_k(k: int) -> int:
        if not 1 <= int(k) <= MAX_K:
            raise RecommenderError(f"k must be between 1 and {MAX_K}, got {k}")
        return int(k)

    def rated(self, user_id: int) -> list[int]:
        """Movie ids the user rated in training."""
        u = self._user(user_id)
        return self.item_ids[self._rated[self._rated_indptr[u] : self._rated_indptr[u + 1]]].tolist()

    def _result(self, idx: np.ndarray, scores: np.ndarray, ratings: np.ndarray | None) -> list[Recommendation]:
        return [
            Recommendation(int(self.item_ids[i]), self.titles[i], list(self.genres[i]),
                           int(self.years[i]) or None, float(s), None if ratings is None else float(r))
            for i, s, r in zip(idx, scores, ratings if ratings is not None else [None] * len(idx))
        ]

    def _unseen_top(self, scores: np.ndarray, n: int, exclude: np.ndarray) -> np.ndarray:
        scores = scores.copy()
        scores[exclude] = -np.inf
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        return top[np.argsort(-scores[top], kind="stable")]

    def _second_stage(self, query: np.ndarray, history: np.ndarray, exclude: np.ndarray, als: np.ndarray | None,
                      ratings_of: Callable[[np.ndarray], np.ndarray] | None, k: int) -> list[Recommendation]:
        """Top-``k`` as evaluation orders them (``movierec.ranker``): the union of the retrieval
        model's candidates (from Annoy, for ``query``), EASEᴿ's (from the ``history`` movies) and
        ALS's (from the user's factors ``als``), ``max(k, candidates)`` from each, scored by the
        learned ranker; ``ratings_of(movies)`` gives the rating model's stars (None: there is none)."""
        n = max(k, self.candidates)
        lists = [self.index.query_excluding(query, n, exclude)]
        ease = np.zeros(len(self.item_ids), np.float32)
        if self.ease_weights is not None:
            covered = np.searchsorted(self.ease_items, history)
            covered = covered[(covered < len(self.ease_items)) & (self.ease_items[np.minimum(covered, len(
                self.ease_items) - 1)] == history)]
            ease[self.ease_items] = self.ease_weights[covered].sum(axis=0)
            lists.append(self._unseen_top(ease, n, exclude))
        als_scores = np.zeros(len(self.item_ids), np.float32) if als is None else self.als_items @ als
        if als is not None:
            lists.append(self._unseen_top(als_scores, n, exclude))
        cands = union([np.asarray(x, np.int64)[None, :] for x in lists])[0]
        cands = cands[cands >= 0]
        sources = {"retrieval": self.item_vectors[cands] @ query / self.temperature, "ease": ease[cands],
                   "als": als_scores[cands]}
        ratings = None if ratings_of is None else np.asarray(ratings_of(cands), np.float32)
        scores = self.ranker.score(feature_values(self.ranker.features, sources, ratings, self.popularity[cands]))
        order = np.argsort(-scores, kind="stable")[:k]
        return self._result(cands[order], scores[order], None if ratings is None else ratings[order])

    def has_movie(self, movie_id: int) -> bool:
        """Whether the movie is in the model's catalogue."""
        pos = int(np.searchsorted(self.item_ids, int(movie_id)))
        return pos < len(self.item_ids) and self.item_ids[pos] == int(movie_id)

    def knows_user(self, user_id: int) -> bool:
        """Whether the model was trained on this user (and the bundle carries its users)."""
        if not self.user_data:
            return False
        pos = int(np.searchsorted(self.user_ids, int(user_id)))
        return pos < len(self.user_ids) and self.user_ids[pos] == int(user_id)

    def recommend(self, user_id: int, k: int = 10, exclude_rated: bool = True, also_exclude: Iterable[int] = ()
                  ) -> list[Recommendation]:
        """Top-``k`` movies for a known user: the candidate sources' union, ordered by the learned
        ranker (see :meth:`_second_stage`). ``also_exclude``: movie ids to leave out besides those
        rated in training (e.g. rated since, through the API)."""
        k, u = self._check_k(k), self._user(user_id)
        rated = self._rated[self._rated_indptr[u] : self._rated_indptr[u + 1]]
        exclude = rated if exclude_rated else np.empty(0, np.int64)
        extra = [self._movie(m) for m in also_exclude]
        if extra:
            exclude = np.union1d(exclude, np.asarray(extra, np.int64))
        als = self.als_users[u] if self.als_users is not None else None
        rate = self._rate
        return self._second_stage(self.user_vectors[u], rated, exclude, als,
                                  None if rate is None else lambda movies: rate(np.full(len(movies), u), movies), k)

    def recommend_for_history(self, history: Iterable[int | tuple[int, float]], k: int = 10
                              ) -> list[Recommendation]:
        """Top-``k`` for someone the model has never seen, from movie ids or (movie id, rating) pairs.

        Their retrieval query is the mean of the movie vectors they rated, weighted by how far each
        rating is above 2.5 stars (disliked movies are left out); EASEᴿ and ALS read every movie
        they rated (ALS folds them in with its own user step); the rating feature is the movie
        part of the rating model (global mean + movie bias), as there is no user to bias. A model
        of implicit-only data never learned what stars mean: every movie rated above 2.5 counts
        alike (weight 1), the rest are left out of the query as for any model.
        """
        k = self._check_k(k)
        pairs = [(h, 5.0) if np.isscalar(h) else (h[0], float(h[1])) for h in history]
        if not pairs:
            raise RecommenderError("history is empty: give at least one movie id")
        for movie, rating in pairs:
            if not 0.5 <= rating <= 5.0:  # also false for nan
                raise RecommenderError(f"rating {rating} of movie {movie} is not a number from 0.5 to 5")
        idx = np.array([self._movie(m) for m, _ in pairs])
        weights = np.array([r for _, r in pairs]) - 2.5
        if self.implicit:
            weights = (weights > 0).astype(np.float64)
        if not (weights > 0).any():
            raise RecommenderError("history has no movie rated above 2.5 stars to learn a taste from")
        query = (weights[weights > 0, None] * self.item_vectors[idx[weights > 0]]).sum(axis=0)
        query /= np.linalg.norm(query) or 1.0
        movies = np.unique(idx)
        als = self.als.user_vector(movies) if self.als is not None else None
        baselines = self.baselines
        return self._second_stage(query, movies, movies, als, None if baselines is None else lambda m: baselines[m], k)

    def predict_rating(self, user_id: int, movie_id: int) -> float:
        """The rating model's star rating (0.5–5) of a movie for a known user."""
        return self.predict_ratings([user_id], [movie_id])[0]

    def predict_ratings(self, user_ids: list[int], movie_ids: list[int]) -> list[float]:
        """Star ratings (0.5–5) of many (user, movie) pairs in one batch."""
        if self.implicit:
            raise NoRatingModelError()
        users = np.array([self._user(u) for u in user_ids], dtype=np.int64)
        movies = np.array([self._movie(m) for m in movie_ids], dtype=np.int64)
        return self._rate(users, movies).tolist()

    def similar_movies(self, movie_id: int, k: int = 10) -> list[Recommendation]:
        """The ``k`` movies whose vectors are nearest to this one's (the movie itself left out)."""
        k, m = self._check_k(k), self._movie(movie_id)
        found = self.index.query(self.item_vectors[m], k + 1)
        found = found[found != m][:k]
        return self._result(found, self.item_vectors[found] @ self.item_vectors[m], None)

    def search(self, query: str, limit: int = 20) -> list[Recommendation]:
        """Movies whose title contains ``query`` (case-insensitive)."""
        q = query.lower()
        hits = [i for i, t in enumerate(self.titles) if q in t.lower()][:limit]
        return self._result(np.array(hits, dtype=np.int64), np.ones(len(hits)), None)
