"""Dense integer encodings of ids and side features, the shape every model consumes.

Raw MovieLens ids are sparse and arbitrary; models want contiguous indices. :func:`encode` maps
them once (index 0 of every feature vocabulary is "unknown/padding"), so models, the index and
evaluation share one numbering and the raw ids are recovered only at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from movierec.core.movie_features import MAX_TITLE_TOKENS, MovieVocabulary, vocabulary
from movierec.data.core import Dataset

AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])  # the ml-1m age brackets, applied to raw ages too


@dataclass
class Encoded:
    """Ratings as dense indices plus per-user and per-item feature matrices."""

    user_idx: np.ndarray  # int32 [n_ratings]: dense ids, half the memory of int64 at ML-20M scale
    item_idx: np.ndarray  # int32 [n_ratings]
    rating: np.ndarray  # float32 [n_ratings]
    timestamp: np.ndarray  # int64 [n_ratings]
    user_ids: np.ndarray  # raw id of each user index
    item_ids: np.ndarray  # raw id of each item index
    titles: list[str]
    genres: list[list[str]]
    years: np.ndarray  # int32, 0 = unknown
    user_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [n_users]
    item_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int64 [n_items, width]
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    implicit: bool = False  # ``rating`` is 1.0 throughout, "interacted" (``Dataset.implicit``)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def encode(dataset: Dataset, max_title_tokens: int = MAX_TITLE_TOKENS) -> Encoded:
    """Map ids to dense indices (sorted raw ids, so lookups are a binary search) and encode features."""
    r = dataset.ratings
    user_ids = np.unique(r["user_id"].to_numpy())
    item_ids = np.unique(r["item_id"].to_numpy())
    user_idx = np.searchsorted(user_ids, r["user_id"].to_numpy())
    item_idx = np.searchsorted(item_ids, r["item_id"].to_numpy())

    # Items: metadata rows aligned to the dense item order; items without metadata stay unknown.
    meta = dataset.items
    meta_ids = meta["item_id"].to_numpy()
    pos = np.full(len(item_ids), -1)
    found = np.isin(item_ids, meta_ids)
    order = np.argsort(meta_ids)
    pos[found] = order[np.searchsorted(meta_ids[order], item_ids[found])]
    titles_all = meta["title"].to_pylist()
    genres_all = meta["genres"].to_pylist()
    years_all = pc.fill_null(meta["year"], 0).to_numpy()
    titles = [titles_all[p] if p >= 0 else f"item {i}" for p, i in zip(pos, item_ids)]
    genres = [genres_all[p] or [] if p >= 0 else [] for p in pos]
    years = np.array([years_all[p] if p >= 0 else 0 for p in pos], dtype=np.int32)

    movies = MovieVocabulary.of(titles, genres, years, max_title_tokens)
    item_features = movies.features(titles, genres, years)

    # Users: age bracket, gender, occupation; users without a row get index 0 everywhere.
    u = dataset.users
    upos = np.full(len(user_ids), -1)
    if u.num_rows:
        uids = u["user_id"].to_numpy()
        ufound = np.isin(user_ids, uids)
        uorder = np.argsort(uids)
        upos[ufound] = uorder[np.searchsorted(uids[uorder], user_ids[ufound])]
    ages = pc.fill_null(u["age"], 0).to_numpy() if u.num_rows else np.zeros(0, dtype=np.int32)
    genders = u["gender"].to_pylist()
    occupations = u["occupation"].to_pylist()
    gender_vocab = vocabulary([g for g in genders if g])
    occ_vocab = vocabulary([o for o in occupations if o])
    has = upos >= 0
    age_idx = np.zeros(len(user_ids), dtype=np.int64)
    age_idx[has] = np.searchsorted(AGE_EDGES, ages[upos[has]], side="right") + 1
    user_features = {
        "age": age_idx,
        "gender": np.array([gender_vocab.get(genders[p], 0) if p >= 0 else 0 for p in upos], dtype=np.int64),
        "occupation": np.array([occ_vocab.get(occupations[p], 0) if p >= 0 else 0 for p in upos], dtype=np.int64),
    }
    vocab_sizes = {
        "user": len(user_ids),
        "item": len(item_ids),
        **movies.sizes,
        "age": len(AGE_EDGES) + 2,
        "gender": len(gender_vocab) + 1,
        "occupation": len(occ_vocab) + 1,
    }
    return Encoded(
        user_idx=user_idx.astype(np.int32),
        item_idx=item_idx.astype(np.int32),
        rating=r["rating"].to_numpy().astype(np.float32),
        timestamp=r["timestamp"].to_numpy().astype(np.int64),
        user_ids=user_ids,
        item_ids=item_ids,
        titles=titles,
        genres=genres,
        years=years,
        user_features=user_features,
        item_features=item_features,
        vocab_sizes=vocab_sizes,
        implicit=dataset.implicit,
    )
