"""Movies added to a loaded model after training: their features alone, no ratings, no retraining.

The two-tower model's item side places a new movie from its genres, title and year
(``movierec.serving.item_tower``). That vector is all the retrieval side needs, but the learned
ranker also weighs what the other candidate sources and the rating model say of a movie, and
none of them knows a new one. So for each user a new movie borrows those features from a
**stand-in**: the known movie with the nearest *features* (the item tower's vectors of the
catalogue, without id embeddings) that this user has not rated. Its retrieval score is the
stand-in's, moved by how much more the user's query likes the new movie's features than the
stand-in's: a new movie much like a known one ranks about where that one would.

Measured on a coldstart run (10% of the movies held out with all their ratings, then added as new
movies; README, "Model quality"): this rule gave the new movies 10.1% of the top-10 slots, about
their share of the catalogue. Borrowing from the movie nearest by trained vectors gave them 0.6%,
imputing the ranker's mean none. Letting a rated movie stand in gave them 35-58%, because the
sources score a user's own rated movies high.

Annoy indexes cannot grow once built, so the added movies are scored exactly, beside the index.
That takes one matrix product over them per query, and a few thousand added movies cost less
than the index lookup does. Retrain to make them part of the index (their ratings too).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from movierec.core.movie_features import clean_genres
from movierec.errors import RecommenderError


@dataclass(frozen=True)
class NewMovie:
    """A movie to add: its id (not one the model knows), title, genres and release year (0: unknown)."""

    movie_id: int
    title: str
    genres: tuple[str, ...]
    year: int = 0


def read_new_movies(path: str | Path) -> list[NewMovie]:
    """New movies from a CSV file in MovieLens' ``movies.csv`` layout: a header naming ``movieId``
    and ``title`` (``genres``, separated by ``|``, and ``year`` optional; a title's "(YYYY)" is its
    year), one movie a line. Read with the csv module, not pyarrow: a served installation has numpy
    and Annoy only. A bad line is a RecommenderError naming the file and the line."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecommenderError(f"{path}: cannot be read as a CSV file of UTF-8 text ({exc})") from None
    if not rows:
        raise RecommenderError(f"{path}: empty; expected a header line, e.g. movieId,title,genres")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("movieId", "title") if c not in header]
    if missing:
        raise RecommenderError(f"{path}, line 1: the header {','.join(header)!r} lacks {' and '.join(missing)}; "
                               "expected movieId,title[,genres][,year]")
    column = {name: header.index(name) for name in ("movieId", "title", "genres", "year") if name in header}
    movies, lines = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise RecommenderError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
        cells = {name: row[i].strip() for name, i in column.items()}
        try:
            movie_id = int(cells["movieId"])
            year = int(cells.get("year") or 0)
        except ValueError:
            raise RecommenderError(f"{path}, line {line}: movieId {cells['movieId']!r} and year "
                                   f"{cells.get('year', '')!r} must be whole numbers (year may be empty)") from None
        if movie_id in lines:
            raise RecommenderError(f"{path}, line {line}: movie {movie_id} again (first on line {lines[movie_id]})")
        lines[movie_id] = line
        genres = clean_genres([cells.get("genres", "")], "|")[0]
        movies.append(NewMovie(movie_id, cells["title"], tuple(genres), year))
    return movies


NEIGHBOURS = 32  # known movies kept per added one, nearest features first, to find each user a stand-in


@dataclass
class AddedMovies:
    """The movies added so far, in the order they came. Dense index ``known + j`` is the ``j``-th
    added movie, so a movie's index says which catalogue holds it."""

    catalogue: np.ndarray  # [known, dim] the known movies' feature vectors (the item tower's, no id embedding)
    movies: list[NewMovie] = field(default_factory=list)
    _positions: dict[int, int] = field(default_factory=dict)
    _vectors: np.ndarray = field(init=False)
    _neighbours: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._vectors = np.empty((0, self.catalogue.shape[1]), np.float32)
        self._neighbours = np.empty((0, min(NEIGHBOURS, self.known)), np.int64)

    def __len__(self) -> int:
        return len(self.movies)

    @property
    def known(self) -> int:
        """How many movies the model was trained with."""
        return len(self.catalogue)

    @property
    def vectors(self) -> np.ndarray:
        """[added, dim] unit retrieval vectors, in the order the movies came."""
        return self._vectors[: len(self.movies)]

    def add(self, movie: NewMovie, vector: np.ndarray) -> int:
        """Keep ``movie`` with its feature vector and its nearest known movies by features; returns
        its dense index. The arrays grow by doubling, so adding n movies one at a time copies
        O(n) rows, not O(n²)."""
        n = len(self.movies)
        if n == len(self._vectors):
            size = max(16, 2 * n)
            self._vectors = np.resize(self._vectors, (size, self._vectors.shape[1]))
            self._neighbours = np.resize(self._neighbours, (size, self._neighbours.shape[1]))
        similarity = self.catalogue @ vector
        near = np.argpartition(-similarity, self._neighbours.shape[1] - 1)[: self._neighbours.shape[1]]
        self._neighbours[n] = near[np.argsort(-similarity[near], kind="stable")]
        self._vectors[n] = vector
        self.movies.append(movie)
        self._positions[movie.movie_id] = n
        return self.known + n

    def index_of(self, movie_id: int) -> int | None:
        """The dense index of an added movie id; None if it was not added."""
        j = self._positions.get(movie_id)
        return None if j is None else self.known + j

    def movie(self, index: int) -> NewMovie:
        return self.movies[index - self.known]

    def nearest(self, index: int) -> tuple[int, float]:
        """An added movie's nearest known movie by features, and their cosine similarity."""
        j = index - self.known
        near = int(self._neighbours[j, 0])
        return near, float(self.catalogue[near] @ self._vectors[j])

    def stand_ins(self, index: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """Each dense index's stand-in among the known movies: itself for a known movie; for an
        added one, its nearest known movie by features that is not in ``exclude`` (what the
        user rated), or its nearest if all of its ``NEIGHBOURS`` are."""
        index = np.asarray(index, np.int64)
        added = index >= self.known
        out = index.copy()
        near = self._neighbours[index[added] - self.known]
        first_free = np.argmax(~np.isin(near, exclude), axis=1)  # 0 where every one is excluded
        out[added] = near[np.arange(len(near)), first_free]
        return out

    def top(self, query: np.ndarray, n: int, exclude: np.ndarray) -> np.ndarray:
        """The dense indices of the ``n`` added movies whose vectors are nearest ``query`` (dot
        product) and not in ``exclude``, nearest first."""
        scores = self.vectors @ query
        found = np.flatnonzero(~np.isin(np.arange(len(scores)) + self.known, exclude))
        return found[np.argsort(-scores[found], kind="stable")[:n]] + self.known

    def retrieval(self, query: np.ndarray, index: np.ndarray, stand_in: np.ndarray, trained: np.ndarray
                  ) -> np.ndarray:
        """Added movies' retrieval scores for ``query``: each stand-in's (its ``trained`` vector's),
        plus how much more the query likes the added movie's features than the stand-in's."""
        return trained[stand_in] @ query + self.vectors[index - self.known] @ query - self.catalogue[stand_in] @ query
