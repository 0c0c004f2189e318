"""How a movie's genres, title and year become the feature indices the models read, for the
catalogue at training time and for a movie added to a served model afterwards.

One definition for both, so a new movie is encoded exactly as the movies the item tower learnt
from: the vocabularies are a function of the catalogue's titles, genres and years alone
(``MovieVocabulary.of``), which the bundle carries, so serving rebuilds them without the data.
Index 0 of every vocabulary is "unknown/padding".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

YEAR_BUCKET = 5  # years are grouped in 5-year bins
MAX_TITLE_TOKENS = 8
_TOKEN = re.compile(r"[a-z0-9']+")
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def split_title_year(titles: list[str]) -> tuple[list[str], list[int | None]]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year keep year None. Every
    reader stores titles without the year, so the title words a model learnt never include one."""
    names, years = [], []
    for t in titles:
        m = _TITLE_YEAR.match(t)
        names.append(m.group(1) if m else t.strip())
        years.append(int(m.group(2)) if m else None)
    return names, years


def clean_genres(raw: list[str | None], sep: str) -> list[list[str]]:
    """Genre names split on ``sep``, without empty names or MovieLens' "(no genres listed)", which is none."""
    return [[g for g in (s or "").split(sep) if g and g != "(no genres listed)"] for s in raw]


def vocabulary(values: list[str]) -> dict[str, int]:
    """Each distinct value's index, sorted, from 1 (0 is reserved for unknown/padding)."""
    return {v: i + 1 for i, v in enumerate(sorted(set(values)))}


def padded(rows: list[list[int]], width: int) -> np.ndarray:
    """int64 [len(rows), width]: each row's first ``width`` indices, then zeros."""
    out = np.zeros((len(rows), max(1, width)), dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[:width]
        out[i, : len(r)] = r
    return out


def title_tokens(title: str) -> list[str]:
    return _TOKEN.findall(title.lower())


@dataclass(frozen=True)
class MovieVocabulary:
    """The genre and title-word vocabularies and the year buckets of a catalogue, and the widths
    of its padded feature rows."""

    genres: dict[str, int]
    words: dict[str, int]
    first_year: int  # the catalogue's earliest known year (0: none known)
    last_bucket: int  # its latest year's bucket: later years fall into it
    genre_width: int
    title_width: int = MAX_TITLE_TOKENS

    @classmethod
    def of(cls, titles: list[str], genres: list[list[str]], years: np.ndarray,
           title_width: int = MAX_TITLE_TOKENS) -> MovieVocabulary:
        """The catalogue's vocabularies: every genre; every title word in two titles or more (a
        word of one title carries no shared signal)."""
        counts = Counter(t for title in titles for t in set(title_tokens(title)))
        years = np.asarray(years)
        known = years[years > 0]
        first = int(known.min()) if len(known) else 0
        last = int((known.max() - first) // YEAR_BUCKET + 1) if len(known) else 0
        return cls(vocabulary([g for gs in genres for g in gs]), vocabulary([t for t, c in counts.items() if c >= 2]),
                   first, last, max(map(len, genres), default=1), title_width)

    @property
    def sizes(self) -> dict[str, int]:
        """Each feature's table size, as the models' embeddings are sized."""
        return {"genres": len(self.genres) + 1, "title": len(self.words) + 1, "year": self.last_bucket + 1}

    def features(self, titles: list[str], genres: list[list[str]], years: np.ndarray) -> dict[str, np.ndarray]:
        """The movies' padded feature indices (``genres`` [n, genre_width], ``title`` [n, title_width],
        ``year`` [n, 1]). What the vocabularies do not know counts as unknown: a genre or word they
        lack is left out, a year before the first falls into the first bucket and one after the
        last into the last, an unknown year (0), or any year where the catalogue knew none, is
        bucket 0."""
        years = np.asarray(years, dtype=np.int64)
        bucket = np.clip((years - self.first_year) // YEAR_BUCKET + 1, 1, max(1, self.last_bucket))
        buckets = np.where((years > 0) & (self.last_bucket > 0), bucket, 0)
        return {
            "genres": padded([[self.genres[g] for g in gs if g in self.genres] for gs in genres], self.genre_width),
            "title": padded([[self.words[t] for t in title_tokens(title) if t in self.words] for title in titles],
                            self.title_width),
            "year": buckets[:, None],
        }
