"""Recommendations from a trained bundle, with no Metaflow, Ray or training code at run time.

    from movierec import Recommender
    rec = Recommender.load()             # the bundle packaged inside this installed wheel
    rec.recommend(1, k=10)               # each source's 100 best unseen movies, ordered by the ranker
    rec.recommend_for_history([(50, 5), (181, 4)], k=10)
    rec.predict_rating(1, 50); rec.similar_movies(50, k=10)

Everything runs on numpy and Annoy: the rating model too, as its folded tables (``rating.npz``,
``movierec.serving.rating_tables``). ``backend="onnx"`` runs the bundle's ONNX graph instead (``pip install
'movierec[onnx]'``), ``backend="torch"`` the training code's model (an installation with torch);
all three agree within 1e-4 (checked when the bundle was published, and by the tests). A model of
implicit-only data has no rating model: recommendations carry no predicted rating, and asking for
one is a :class:`NoRatingModelError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from movierec.core.movie_features import split_title_year
from movierec.errors import (
    BundleError,
    NoRatingModelError,
    NoUserDataError,
    RecommenderError,
    UnknownMovieError,
    UnknownUserError,
)
from movierec.models.second_stage import RETRIEVAL, feature_values, union
from movierec.serving.bundle import BACKENDS, Bundle, bundle_of_run, load_bundle

__all__ = ["BACKENDS", "BundleError", "NoRatingModelError", "NoUserDataError", "Recommendation", "Recommender",
           "RecommenderError", "UnknownMovieError", "UnknownUserError"]
MAX_K = 1000
_BUNDLE_FIELDS = frozenset(f.name for f in fields(Bundle))


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


def _position(ids: np.ndarray, raw: int) -> int | None:
    """Where ``raw`` stands in the sorted ``ids``; None if it is not there."""
    pos = int(np.searchsorted(ids, raw))
    return pos if pos < len(ids) and ids[pos] == raw else None


def _lookup(ids: np.ndarray, raw: int, error: type[RecommenderError]) -> int:
    pos = _position(ids, raw)
    if pos is None:
        raise error(raw)
    return pos


class Recommender:
    """A loaded bundle. Thread-compatible for reads; load once, query many times."""

    def __init__(self, bundle: Bundle):
        """``bundle`` as :func:`movierec.serving.bundle.load_bundle` returns it: read and checked there,
        so the queries here can trust every shape and value."""
        self.bundle = bundle

    def __getattr__(self, name: str) -> object:
        """The bundle's fields read as the recommender's own (``rec.item_ids``, ``rec.info``,
        ``rec.backend``...): the checked :class:`Bundle` is the one place they live, not copied here."""
        if name in _BUNDLE_FIELDS:
            return getattr(self.__dict__["bundle"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        return cls(load_bundle(source, backend))

    @classmethod
    def from_bytes(cls, bundle: bytes, backend: str = "numpy") -> Recommender:
        return cls.from_source(bundle, backend)

    @classmethod
    def from_run(cls, run: str | None, backend: str = "numpy") -> Recommender:
        """The bundle published by a RecommenderFlow run (Metaflow must be installed); ``None``:
        the latest successful run in the Metaflow datastore this directory uses."""
        pathspec, blob = bundle_of_run(run)
        return cls(load_bundle(blob, backend, pathspec))

    def describe(self) -> dict:
        """Which run, data and metrics the model comes from, and what runs its rating model."""
        import movierec

        b = self.bundle
        return {"version": movierec.__version__, "backend": b.backend, "implicit": b.implicit,
                **{k: b.info.get(k) for k in ("flow", "run_id", "user_data", "dataset", "metrics", "exports")}}

    # ------------------------------------------------------------------ queries

    def _user(self, user_id: int) -> int:
        if not self.bundle.user_data:
            raise NoUserDataError()
        return _lookup(self.bundle.user_ids, int(user_id), UnknownUserError)

    def _movie(self, movie_id: int) -> int:
        return _lookup(self.bundle.item_ids, int(movie_id), UnknownMovieError)

    @staticmethod
    def _check_k(k: int) -> int:
        if not 1 <= int(k) <= MAX_K:
            raise RecommenderError(f"k must be between 1 and {MAX_K}, got {k}")
        return int(k)

    def rated(self, user_id: int) -> list[int]:
        """Movie ids the user rated in training."""
        return self.bundle.item_ids[self._rated_by(self._user(user_id))].tolist()

    def _rated_by(self, u: int) -> np.ndarray:
        """The training movies (dense indices) of user index ``u``."""
        b = self.bundle
        return b.rated[b.rated_indptr[u] : b.rated_indptr[u + 1]]

    def _result(self, idx: np.ndarray, scores: np.ndarray, ratings: np.ndarray | None) -> list[Recommendation]:
        b = self.bundle
        return [
            Recommendation(movie_id=int(b.item_ids[i]), title=b.titles[i], genres=list(b.genres[i]),
                           year=int(b.years[i]) or None, score=float(s),
                           predicted_rating=None if ratings is None else float(r))
            for i, s, r in zip(idx, scores, ratings if ratings is not None else [None] * len(idx))
        ]

    def _unseen_top(self, scores: np.ndarray, n: int, exclude: np.ndarray) -> np.ndarray:
        scores = scores.copy()
        scores[exclude] = -np.inf
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        return top[np.argsort(-scores[top], kind="stable")]

    def _second_stage(self, query: np.ndarray, history: np.ndarray, exclude: np.ndarray, *, user: int | None,
                      ratings_of: Callable[[np.ndarray], np.ndarray] | None, k: int) -> list[Recommendation]:
        """Top-``k`` as evaluation orders them (``movierec.models.second_stage``): the union of the retrieval
        model's candidates (from Annoy, for ``query``) and each candidate source's (of training
        user ``user``, or folded in from the ``history`` movies for a new user, None),
        ``max(k, candidates)`` from each, scored by the learned ranker; ``ratings_of(movies)``
        gives the rating model's stars (None: there is none)."""
        b = self.bundle
        n = max(k, b.ranker.candidates)
        rows = {name: source.user_scores(user, history) for name, source in b.sources.items()}
        lists = [b.index.query_excluding(query, n, exclude),
                 *(self._unseen_top(row, n, exclude) for row in rows.values())]
        cands = union([np.asarray(x, np.int64)[None, :] for x in lists])[0]
        cands = cands[cands >= 0]
        scores = {RETRIEVAL: b.item_vectors[cands] @ query / b.temperature,
                  **{name: row[cands] for name, row in rows.items()}}
        ratings = None if ratings_of is None else np.asarray(ratings_of(cands), np.float32)
        scores = b.ranker.score(feature_values(b.ranker.features, scores, ratings, b.popularity[cands]))
        order = np.argsort(-scores, kind="stable")[:k]
        return self._result(cands[order], scores[order], None if ratings is None else ratings[order])

    def has_movie(self, movie_id: int) -> bool:
        """Whether the movie is in the model's catalogue."""
        return _position(self.bundle.item_ids, int(movie_id)) is not None

    def knows_user(self, user_id: int) -> bool:
        """Whether the model was trained on this user (and the bundle carries its users)."""
        return self.bundle.user_data and _position(self.bundle.user_ids, int(user_id)) is not None

    def recommend(self, user_id: int, k: int = 10, exclude_rated: bool = True, also_exclude: Iterable[int] = ()
                  ) -> list[Recommendation]:
        """Top-``k`` movies for a known user: the candidate sources' union, ordered by the learned
        ranker (see :meth:`_second_stage`). ``also_exclude``: movie ids to leave out besides those
        rated in training (e.g. rated since, through the API)."""
        k, u = self._check_k(k), self._user(user_id)
        rated = self._rated_by(u)
        exclude = rated if exclude_rated else np.empty(0, np.int64)
        extra = [self._movie(m) for m in also_exclude]
        if extra:
            exclude = np.union1d(exclude, np.asarray(extra, np.int64))
        rate = self.bundle.rate
        ratings_of = None if rate is None else lambda movies: rate(np.full(len(movies), u), movies)
        return self._second_stage(self.bundle.user_vectors[u], rated, exclude, user=u, ratings_of=ratings_of, k=k)

    def recommend_for_history(self, history: Iterable[int | tuple[int, float]], k: int = 10
                              ) -> list[Recommendation]:
        """Top-``k`` for someone the model has never seen, from movie ids or (movie id, rating) pairs.

        Their retrieval query is the mean of the movie vectors they rated, weighted by how far each
        rating is above 2.5 stars (disliked movies are left out); every candidate source folds in
        every movie they rated (``CandidateSource.fold_in``: ALS with its own user step); the rating
        feature is the movie part of the rating model (global mean + movie bias), as there is no user to bias. A model
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
        if self.bundle.implicit:
            weights = (weights > 0).astype(np.float64)
        if not (weights > 0).any():
            raise RecommenderError("history has no movie rated above 2.5 stars to learn a taste from")
        query = (weights[weights > 0, None] * self.bundle.item_vectors[idx[weights > 0]]).sum(axis=0)
        query /= np.linalg.norm(query) or 1.0
        movies = np.unique(idx)
        baselines = self.bundle.baselines
        return self._second_stage(query, movies, movies, user=None, k=k,
                                  ratings_of=None if baselines is None else lambda m: baselines[m])

    def predict_rating(self, user_id: int, movie_id: int) -> float:
        """The rating model's star rating (0.5–5) of a movie for a known user."""
        return self.predict_ratings([user_id], [movie_id])[0]

    def predict_ratings(self, user_ids: list[int], movie_ids: list[int]) -> list[float]:
        """Star ratings (0.5–5) of many (user, movie) pairs in one batch."""
        if self.bundle.implicit:
            raise NoRatingModelError()
        users = np.array([self._user(u) for u in user_ids], dtype=np.int64)
        movies = np.array([self._movie(m) for m in movie_ids], dtype=np.int64)
        return self.bundle.rate(users, movies).tolist()

    def similar_movies(self, movie_id: int, k: int = 10) -> list[Recommendation]:
        """The ``k`` movies whose vectors are nearest to this one's (the movie itself left out)."""
        k, m = self._check_k(k), self._movie(movie_id)
        vectors = self.bundle.item_vectors
        found = self.bundle.index.query(vectors[m], k + 1)
        found = found[found != m][:k]
        return self._result(found, vectors[found] @ vectors[m], None)

    def movie_vector(self, title: str, genres: Iterable[str], year: int = 0) -> np.ndarray:
        """The retrieval vector of a movie that was not in training, from its title, genres and
        release year (0: unknown) alone, as the two-tower model places the catalogue's movies
        without their ratings (``movierec.serving.item_tower``). A title ending in "(YYYY)" is
        read as the readers read MovieLens titles: the year is not a title word, and it is the
        release year unless ``year`` gives one. Genres and title words the catalogue never had
        count as unknown."""
        if self.bundle.item_tower is None:
            raise RecommenderError("this model cannot place a new movie: its retrieval model reads no movie "
                                   "features (LightGCN knows movies by their ratings alone)")
        if isinstance(genres, str):
            raise RecommenderError(f"genres must be a list of genre names, not the string {genres!r}")
        (name,), (title_year,) = split_title_year([str(title)])
        features = self.bundle.movies.features([name], [list(genres)], np.array([int(year) or title_year or 0]))
        return self.bundle.item_tower(features)[0]

    def search(self, query: str, limit: int = 20) -> list[Recommendation]:
        """Movies whose title contains ``query`` (case-insensitive)."""
        q = query.lower()
        hits = [i for i, t in enumerate(self.bundle.titles) if q in t.lower()][:limit]
        return self._result(np.array(hits, dtype=np.int64), np.ones(len(hits)), None)
