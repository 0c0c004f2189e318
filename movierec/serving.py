"""Recommendations from a trained bundle, with no Metaflow, Ray or training code at run time.

    from movierec import Recommender
    rec = Recommender.load()             # the bundle packaged inside this installed wheel
    rec.recommend(1, k=10)               # Annoy retrieval of 100 unseen movies, re-ranked
    rec.recommend_for_history([(50, 5), (181, 4)], k=10)
    rec.predict_rating(1, 50); rec.similar_movies(50, k=10)
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from movierec.index import Index, IndexSettings
from movierec.nn import state_from_bytes
from movierec.publish import BUNDLE_FILES
from movierec.ranking import RatingModel, predict, two_stage_scores

MAX_K = 1000


class RecommenderError(Exception):
    """Base class for errors a caller can act on (bad ids, bad arguments, missing bundle)."""


class UnknownUserError(RecommenderError, KeyError):
    def __str__(self) -> str:
        return f"unknown user id {self.args[0]}: the model was not trained on this user"


class UnknownMovieError(RecommenderError, KeyError):
    def __str__(self) -> str:
        return f"unknown movie id {self.args[0]}: not in the model's catalogue"


class BundleNotFoundError(RecommenderError):
    pass


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


class Recommender:
    """A loaded bundle. Thread-compatible for reads; load once, query many times."""

    def __init__(self, directory: Path, _tmp: tempfile.TemporaryDirectory | None = None):
        self._tmp = _tmp  # keeps an extracted bundle alive as long as this object
        d = Path(directory)
        missing = [f for f in BUNDLE_FILES if not (d / f).is_file()]
        if missing:
            raise BundleNotFoundError(f"{d}: not a movierec bundle (missing {', '.join(missing)})")
        self.info = json.loads((d / "model.json").read_text())
        vectors = np.load(d / "vectors.npz")
        self.user_vectors, self.item_vectors = vectors["users"], vectors["items"]
        ids = np.load(d / "ids.npz")
        self.user_ids, self.item_ids, self.years = ids["user_ids"], ids["item_ids"], ids["years"]
        self._rated_indptr, self._rated = ids["rated_indptr"], ids["rated"]
        items = json.loads((d / "items.json").read_text())
        self.titles, self.genres = items["titles"], items["genres"]
        self.temperature = float(self.info["retrieval"]["temperature"])
        torch.set_num_threads(1)  # single requests: thread start-up costs more than it saves
        state = state_from_bytes((d / "ranking.pt").read_bytes())
        self.ranker = RatingModel.from_state(self.info["sizes"], self.info["ranking"], state)
        self.index = Index((d / "items.ann").read_bytes(), self.item_vectors.shape[1],
                           IndexSettings(**self.info["index"]))
        self.candidates = 100

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path | None = None) -> Recommender:
        """Load a bundle: the one packaged in this installation (default), a bundle folder or zip,
        or a Metaflow run (``"RecommenderFlow/<run id>"`` or a bare run id; needs metaflow)."""
        if source is None:
            packaged = resources.files("movierec") / "bundle"
            if not packaged.is_dir():
                raise BundleNotFoundError(
                    "no model is packaged with this installation of movierec (a source checkout has none): "
                    "install a published wheel, or pass a bundle path or a Metaflow run id")
            return cls(Path(str(packaged)))
        path = Path(source)
        if path.is_dir():
            return cls(path)
        if path.is_file():
            return cls.from_bytes(path.read_bytes())
        if str(source).replace("RecommenderFlow/", "").isalnum():
            return cls.from_run(str(source))
        raise BundleNotFoundError(f"{source}: no such bundle file, folder or Metaflow run")

    @classmethod
    def from_bytes(cls, bundle: bytes) -> Recommender:
        tmp = tempfile.TemporaryDirectory(prefix="movierec-bundle-")
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            zf.extractall(tmp.name)
        return cls(Path(tmp.name), _tmp=tmp)

    @classmethod
    def from_run(cls, run: str) -> Recommender:
        """The bundle published by a RecommenderFlow run (Metaflow must be installed)."""
        try:
            from metaflow import Run, namespace
        except ImportError as exc:
            raise BundleNotFoundError("loading from a Metaflow run needs metaflow installed") from exc
        namespace(None)
        pathspec = run if "/" in run else f"RecommenderFlow/{run}"
        try:
            return cls.from_bytes(Run(pathspec)["publish"].task.data.bundle)
        except Exception as exc:  # metaflow raises several types for missing runs/steps
            raise BundleNotFoundError(f"{pathspec}: no published bundle ({exc})") from exc

    # ------------------------------------------------------------------ queries

    def _user(self, user_id: int) -> int:
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

    def _retrieve(self, query: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        found = self.index.query(query, self.candidates + len(exclude))
        return found[~np.isin(found, exclude)][: self.candidates]

    def _rank(self, query: np.ndarray, cands: np.ndarray, ratings: np.ndarray, k: int) -> list[Recommendation]:
        scores = two_stage_scores(self.item_vectors[cands] @ query / self.temperature, ratings)
        order = np.argsort(-scores, kind="stable")[:k]
        return self._result(cands[order], scores[order], ratings[order])

    def recommend(self, user_id: int, k: int = 10, exclude_rated: bool = True) -> list[Recommendation]:
        """Top-``k`` movies for a known user: Annoy retrieves candidates, the rating model re-ranks."""
        k, u = self._check_k(k), self._user(user_id)
        seen = self._rated[self._rated_indptr[u] : self._rated_indptr[u + 1]] if exclude_rated else np.empty(0, int)
        cands = self._retrieve(self.user_vectors[u], seen)
        ratings = predict(self.ranker, np.full(len(cands), u), cands)
        return self._rank(self.user_vectors[u], cands, ratings, k)

    def recommend_for_history(self, history: Iterable[int | tuple[int, float]], k: int = 10
                              ) -> list[Recommendation]:
        """Top-``k`` for someone the model has never seen, from movie ids or (movie id, rating) pairs.

        Their taste vector is the mean of the movie vectors they rated, weighted by how far each
        rating is above 2.5 stars (disliked movies are left out); candidates are re-ranked with
        the movie part of the rating model (global mean + movie bias), as there is no user to bias.
        """
        k = self._check_k(k)
        pairs = [(h, 5.0) if np.isscalar(h) else (h[0], float(h[1])) for h in history]
        if not pairs:
            raise RecommenderError("history is empty: give at least one movie id")
        idx = np.array([self._movie(m) for m, _ in pairs])
        weights = np.array([r for _, r in pairs]) - 2.5
        if not (weights > 0).any():
            raise RecommenderError("history has no movie rated above 2.5 stars to learn a taste from")
        query = (weights[weights > 0, None] * self.item_vectors[idx[weights > 0]]).sum(axis=0)
        query /= np.linalg.norm(query) or 1.0
        cands = self._retrieve(query, idx)
        with torch.no_grad():
            ratings = self.ranker.item_baseline(torch.as_tensor(cands)).clamp(0.5, 5.0).numpy()
        return self._rank(query, cands, ratings, k)

    def predict_rating(self, user_id: int, movie_id: int) -> float:
        """The rating model's star rating (0.5–5) of a movie for a known user."""
        return self.predict_ratings([user_id], [movie_id])[0]

    def predict_ratings(self, user_ids: list[int], movie_ids: list[int]) -> list[float]:
        """Star ratings (0.5–5) of many (user, movie) pairs in one batch."""
        users = np.array([self._user(u) for u in user_ids], dtype=np.int64)
        movies = np.array([self._movie(m) for m in movie_ids], dtype=np.int64)
        return predict(self.ranker, users, movies).tolist()

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
