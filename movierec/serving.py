"""Recommendations from a trained bundle, with no Metaflow, Ray or training code at run time.

    from movierec import Recommender
    rec = Recommender.load()             # the bundle packaged inside this installed wheel
    rec.recommend(1, k=10)               # Annoy retrieval of 100 unseen movies, re-ranked
    rec.recommend_for_history([(50, 5), (181, 4)], k=10)
    rec.predict_rating(1, 50); rec.similar_movies(50, k=10)

Ratings come from the folded rating model (``RatingModel.fold``), run by onnxruntime when it is
installed (``pip install 'movierec[onnx]'``) and the bundle holds ``ranking.onnx``, by torch
otherwise; ``backend=`` forces one.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from movierec.index import Index, IndexSettings
from movierec.nn import state_from_bytes
from movierec.publish import BUNDLE_FILES
from movierec.ranking import FoldedRatingModel, RatingModel, two_stage_scores

MAX_K = 1000
BACKENDS = ("auto", "onnx", "torch")


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


def rating_backend(onnx_file: Path, folded: FoldedRatingModel, choice: str = "auto"
                   ) -> tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """(name, rate) where ``rate(user indices, movie indices)`` gives star ratings: onnxruntime when
    asked, or for ``"auto"`` when it is installed and the bundle has the graph; torch otherwise."""
    if choice not in BACKENDS:
        raise RecommenderError(f"backend must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice != "torch":
        try:
            from movierec.export import session

            graph = session(onnx_file.read_bytes()) if onnx_file.is_file() else None
        except ImportError:
            graph = None
            if choice == "onnx":
                raise RecommenderError("backend 'onnx' needs onnxruntime: pip install 'movierec[onnx]'") from None
        if graph is not None:
            return "onnx", lambda u, i: graph.run(None, {"users": np.asarray(u, np.int64),
                                                         "items": np.asarray(i, np.int64)})[0]
        if choice == "onnx":
            raise RecommenderError(f"{onnx_file.parent}: this bundle has no {onnx_file.name}")

    def rate(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return folded(torch.as_tensor(users, dtype=torch.int64), torch.as_tensor(items, dtype=torch.int64)).numpy()

    return "torch", rate


class Recommender:
    """A loaded bundle. Thread-compatible for reads; load once, query many times."""

    def __init__(self, directory: Path, _tmp: tempfile.TemporaryDirectory | None = None, backend: str = "auto"):
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
        folded = RatingModel.from_state(self.info["sizes"], self.info["ranking"], state).fold()
        self.baselines = folded.item_baselines()
        self.backend, self._rate = rating_backend(d / "ranking.onnx", folded, backend)
        self.index = Index((d / "items.ann").read_bytes(), self.item_vectors.shape[1],
                           IndexSettings(**self.info["index"]))
        self.candidates = 100

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path | None = None, backend: str = "auto") -> Recommender:
        """Load a bundle: the one packaged in this installation (default), a bundle folder or zip,
        or a Metaflow run (``"RecommenderFlow/<run id>"`` or a bare run id; needs metaflow).
        ``backend`` runs the rating model on ``"onnx"`` or ``"torch"`` (``"auto"``: onnx if it can)."""
        if source is None:
            packaged = resources.files("movierec") / "bundle"
            if not packaged.is_dir():
                raise BundleNotFoundError(
                    "no model is packaged with this installation of movierec (a source checkout has none): "
                    "install a published wheel, or pass a bundle path or a Metaflow run id")
            return cls(Path(str(packaged)), backend=backend)
        path = Path(source)
        if path.is_dir():
            return cls(path, backend=backend)
        if path.is_file():
            return cls.from_bytes(path.read_bytes(), backend)
        if str(source).replace("RecommenderFlow/", "").isalnum():
            return cls.from_run(str(source), backend)
        raise BundleNotFoundError(f"{source}: no such bundle file, folder or Metaflow run")

    @classmethod
    def from_bytes(cls, bundle: bytes, backend: str = "auto") -> Recommender:
        tmp = tempfile.TemporaryDirectory(prefix="movierec-bundle-")
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            zf.extractall(tmp.name)
        return cls(Path(tmp.name), _tmp=tmp, backend=backend)

    @classmethod
    def from_run(cls, run: str, backend: str = "auto") -> Recommender:
        """The bundle published by a RecommenderFlow run (Metaflow must be installed)."""
        try:
            from metaflow import Run, namespace
        except ImportError as exc:
            raise BundleNotFoundError("loading from a Metaflow run needs metaflow installed") from exc
        namespace(None)
        pathspec = run if "/" in run else f"RecommenderFlow/{run}"
        try:
            bundle = Run(pathspec)["publish"].task.data.bundle
        except Exception as exc:  # metaflow raises several types for missing runs/steps
            raise BundleNotFoundError(f"{pathspec}: no published bundle ({exc})") from exc
        return cls.from_bytes(bundle, backend)

    def describe(self) -> dict:
        """Which run, data and metrics the model comes from, and what runs its rating model."""
        import movierec

        return {"version": movierec.__version__, "backend": self.backend,
                **{k: self.info.get(k) for k in ("flow", "run_id", "dataset", "metrics", "onnx")}}

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
        ratings = self._rate(np.full(len(cands), u), cands)
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
        return self._rank(query, cands, self.baselines[cands], k)

    def predict_rating(self, user_id: int, movie_id: int) -> float:
        """The rating model's star rating (0.5–5) of a movie for a known user."""
        return self.predict_ratings([user_id], [movie_id])[0]

    def predict_ratings(self, user_ids: list[int], movie_ids: list[int]) -> list[float]:
        """Star ratings (0.5–5) of many (user, movie) pairs in one batch."""
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
