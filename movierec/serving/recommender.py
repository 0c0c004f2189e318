"""Recommendations from a trained bundle, with no Metaflow, Ray or training code at run time.

    from movierec import Recommender
    rec = Recommender.load()             # the bundle packaged inside this installed wheel
    rec.recommend(1, k=10)               # each source's 100 best unseen movies, ordered by the ranker
    rec.recommend_for_history([(50, 5), (181, 4)], k=10)
    rec.predict_rating(1, 50); rec.similar_movies(50, k=10)
    rec.add_movie(5001, "A New Film (2027)", ["Sci-Fi"])   # recommendable now, without retraining

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

from movierec.core.ids import MAX_ID
from movierec.core.movie_features import split_title_year
from movierec.errors import (
    BundleError,
    MovieExistsError,
    NoRatingModelError,
    NoUserDataError,
    RecommenderError,
    UnknownMovieError,
    UnknownUserError,
)
from movierec.models.second_stage import RETRIEVAL, feature_values, union
from movierec.serving.bundle import BACKENDS, Bundle, bundle_of_run, load_bundle
from movierec.serving.new_movies import AddedMovies, NewMovie

__all__ = ["BACKENDS", "AddedMovie", "BundleError", "MovieExistsError", "NewMovie", "NoRatingModelError",
           "NoUserDataError", "Recommendation", "Recommender", "RecommenderError", "UnknownMovieError",
           "UnknownUserError"]
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


@dataclass
class AddedMovie:
    """A movie added to a loaded model (:meth:`Recommender.add_movie`), as the catalogue now lists
    it, and the known movie whose features are nearest its own (``nearest``; its score: their
    feature vectors' cosine similarity), which stands in for it with users who have not rated it."""

    movie_id: int
    title: str
    genres: list[str]
    year: int | None
    nearest: Recommendation

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
        self.added: AddedMovies | None = None  # movies added since loading (add_movie), from the first one

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
        (``"RecommenderFlow/<run id>"``, any flow's ``"<flow>/<run id>"``, a bare run id of
        RecommenderFlow, or ``"promoted"``: the latest run the promotion gate let through; needs
        metaflow).
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
        """The dense index of a known or added movie (an added one's is past the known ones')."""
        pos = _position(self.bundle.item_ids, int(movie_id))
        if pos is None and self.added is not None:
            pos = self.added.index_of(int(movie_id))
        if pos is None:
            raise UnknownMovieError(movie_id)
        return pos

    def _vectors(self, idx: np.ndarray) -> np.ndarray:
        """The retrieval vectors of known or added movies by dense index."""
        idx = np.asarray(idx, np.int64)
        if self.added is None:
            return self.bundle.item_vectors[idx]
        known = idx < self.added.known
        out = np.empty((len(idx), self.bundle.item_vectors.shape[1]), np.float32)
        out[known] = self.bundle.item_vectors[idx[known]]
        out[~known] = self.added.vectors[idx[~known] - self.added.known]
        return out

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
        """Known or added movies by dense index; an added movie has no predicted rating (the
        rating model never saw it)."""
        b, known = self.bundle, len(self.bundle.item_ids)
        out = []
        for i, s, r in zip(idx, scores, ratings if ratings is not None else [None] * len(idx)):
            if i < known:
                out.append(Recommendation(movie_id=int(b.item_ids[i]), title=b.titles[i], genres=list(b.genres[i]),
                                          year=int(b.years[i]) or None, score=float(s),
                                          predicted_rating=None if r is None else float(r)))
            else:
                m = self.added.movie(int(i))
                out.append(Recommendation(movie_id=m.movie_id, title=m.title, genres=list(m.genres),
                                          year=m.year or None, score=float(s)))
        return out

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
        user ``user``, or folded in from the known ``history`` movies for a new user, None),
        ``max(k, candidates)`` from each, scored by the learned ranker; ``ratings_of(movies)``
        gives the rating model's stars of known movies (None: there is none). The ``max(k,
        candidates)`` added movies nearest ``query`` join the candidates, each ranked with a
        stand-in's features (``movierec.serving.new_movies``). ``exclude``: dense indices, known
        or added."""
        b, known = self.bundle, len(self.bundle.item_ids)
        n = max(k, b.ranker.candidates)
        rows = {name: source.user_scores(user, history) for name, source in b.sources.items()}
        known_exclude = exclude[exclude < known]
        lists = [b.index.query_excluding(query, n, known_exclude),
                 *(self._unseen_top(row, n, known_exclude) for row in rows.values())]
        cands = union([np.asarray(x, np.int64)[None, :] for x in lists])[0]
        cands = cands[cands >= 0]
        retrieval, stand_in = b.item_vectors[cands] @ query, cands
        if self.added:
            new = self.added.top(query, n, exclude)
            new_stand_in = self.added.stand_ins(new, exclude)
            cands, stand_in = np.concatenate([cands, new]), np.concatenate([cands, new_stand_in])
            retrieval = np.concatenate([retrieval, self.added.retrieval(query, new, new_stand_in, b.item_vectors)])
        scores = {RETRIEVAL: retrieval / b.temperature, **{name: row[stand_in] for name, row in rows.items()}}
        ratings = None if ratings_of is None else np.asarray(ratings_of(stand_in), np.float32)
        scores = b.ranker.score(feature_values(b.ranker.features, scores, ratings, b.popularity[stand_in]))
        order = np.argsort(-scores, kind="stable")[:k]
        return self._result(cands[order], scores[order], None if ratings is None else ratings[order])

    def has_movie(self, movie_id: int) -> bool:
        """Whether the movie is in the model's catalogue (trained on, or added since)."""
        movie_id = int(movie_id)
        return _position(self.bundle.item_ids, movie_id) is not None or (
            self.added is not None and self.added.index_of(movie_id) is not None)

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
        alike (weight 1), the rest are left out of the query as for any model. A movie added
        after training joins the query with its feature vector; the candidate sources fold in its
        nearest known movie by features in its place.
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
        query = (weights[weights > 0, None] * self._vectors(idx[weights > 0])).sum(axis=0)
        query /= np.linalg.norm(query) or 1.0
        movies = np.unique(idx)
        baselines = self.bundle.baselines
        known = movies if self.added is None else np.unique(self.added.stand_ins(movies, np.empty(0, np.int64)))
        return self._second_stage(query, known, movies, user=None, k=k,
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
        for movie_id, m in zip(movie_ids, movies):
            if m >= len(self.bundle.item_ids):
                raise RecommenderError(f"movie {movie_id} was added after training: the rating model has no "
                                       "rating of it until a training run learns one from its ratings")
        return self.bundle.rate(users, movies).tolist()

    def similar_movies(self, movie_id: int, k: int = 10) -> list[Recommendation]:
        """The ``k`` movies whose vectors are nearest to this one's (the movie itself left out),
        known or added."""
        k, m = self._check_k(k), self._movie(movie_id)
        query = self._vectors(np.array([m]))[0]
        found = self.bundle.index.query(query, k + 1)
        similarity = self.bundle.item_vectors[found] @ query
        if self.added:
            new = self.added.top(query, k + 1, np.array([m]))
            found, similarity = np.concatenate([found, new]), np.concatenate([similarity, self._vectors(new) @ query])
        keep = found != m
        found, similarity = found[keep], similarity[keep]
        order = np.argsort(-similarity, kind="stable")[:k]
        return self._result(found[order], similarity[order], None)

    def movie_vector(self, title: str, genres: Iterable[str], year: int = 0) -> np.ndarray:
        """The retrieval vector of a movie that was not in training, from its title, genres and
        release year (0: unknown) alone, as the two-tower model places the catalogue's movies
        without their ratings (``movierec.serving.item_tower``). A title ending in "(YYYY)" is
        read as the readers read MovieLens titles: the year is not a title word, and it is the
        release year unless ``year`` gives one. Genres and title words the catalogue never had
        count as unknown."""
        return self._place([self._new_movie(0, title, genres, year)])[0]

    @staticmethod
    def _new_movie(movie_id: int, title: str, genres: Iterable[str], year: int = 0) -> NewMovie:
        """A new movie's fields checked and read as a MovieLens reader reads them: the title
        without its "(YYYY)", which is the year unless ``year`` gives one."""
        if isinstance(genres, str):
            raise RecommenderError(f"genres must be a list of genre names, not the string {genres!r}")
        (name,), (title_year,) = split_title_year([str(title)])
        if not name:
            raise RecommenderError(f"movie {movie_id}: the title is empty")
        return NewMovie(int(movie_id), name, tuple(str(g) for g in genres), int(year) or title_year or 0)

    def _place(self, movies: list[NewMovie]) -> np.ndarray:
        """The retrieval vectors of new movies from their features (``movierec.serving.item_tower``)."""
        if self.bundle.item_tower is None:
            raise RecommenderError("this model cannot place a new movie: its retrieval model reads no movie "
                                   "features (LightGCN knows movies by their ratings alone)")
        features = self.bundle.movies.features([m.title for m in movies], [list(m.genres) for m in movies],
                                               np.array([m.year for m in movies]))
        return self.bundle.item_tower(features)

    def add_movie(self, movie_id: int, title: str, genres: Iterable[str], year: int = 0) -> AddedMovie:
        """Add a movie that came out after training, from its title, genres and release year (0:
        unknown; a title's "(YYYY)" counts): from now on it can be recommended, found as similar,
        searched and rated in a history, without retraining. It is placed by the two-tower
        model's item side and ranked, for each user, with the features of the known movie most
        like it that the user has not rated (``movierec.serving.new_movies``). It lives in this
        loaded model only; a training run learns it from its ratings once the data lists it."""
        return self.add_movies([NewMovie(int(movie_id), title, genres, int(year))])[0]

    def add_movies(self, movies: Iterable[NewMovie]) -> list[AddedMovie]:
        """:meth:`add_movie` for many movies, placed in one batch: all of them or, if any is
        refused (an id the catalogue has, twice in the batch, or out of range; an empty title),
        none."""
        new = [self._new_movie(m.movie_id, m.title, m.genres, m.year) for m in movies]
        seen: set[int] = set()
        for m in new:
            if not 0 <= m.movie_id <= MAX_ID:
                raise RecommenderError(f"movie id {m.movie_id} is out of range (0 to {MAX_ID})")
            if self.has_movie(m.movie_id) or m.movie_id in seen:
                raise MovieExistsError(m.movie_id)
            seen.add(m.movie_id)
        if not new:
            return []
        vectors = self._place(new)
        if self.added is None:
            b = self.bundle
            self.added = AddedMovies(self._place([NewMovie(0, t, tuple(g), int(y))
                                                   for t, g, y in zip(b.titles, b.genres, b.years)]))
        added = []
        for m, v in zip(new, vectors):
            nearest, similarity = self.added.nearest(self.added.add(m, v))
            added.append(AddedMovie(m.movie_id, m.title, list(m.genres), m.year or None,
                                    self._result(np.array([nearest]), np.array([similarity]), None)[0]))
        return added

    def search(self, query: str, limit: int = 20) -> list[Recommendation]:
        """Movies whose title contains ``query`` (case-insensitive)."""
        q = query.lower()
        titles = [*self.bundle.titles, *(m.title for m in (self.added.movies if self.added else []))]
        hits = [i for i, t in enumerate(titles) if q in t.lower()][:limit]
        return self._result(np.array(hits, dtype=np.int64), np.ones(len(hits)), None)
