"""Synthetic MovieLens-20M-shaped data at any size, for scale work and fast tests.

Popularity follows a power law (a few blockbusters, a long tail) and tastes have latent
structure: users and movies get random factor vectors, a user picks movies in proportion to
popularity times taste affinity, and rates them by affinity plus noise. A model can therefore
learn something real, and the generator is vectorised so 20M ratings take seconds, not hours.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from movierec.data.core import ITEMS_SCHEMA, RATINGS_SCHEMA, USERS_SCHEMA, Dataset

GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
OCCUPATIONS = ["student", "engineer", "educator", "artist", "writer", "programmer", "other"]
ML20M_SHAPE = {"n_users": 138_493, "n_items": 26_744, "n_ratings": 20_000_263}


def _sorted_distinct(keys: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2's hash-based unique is several times slower on int64 keys."""
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


def generate(n_users: int = 1000, n_items: int = 500, n_ratings: int = 50_000, *, factors: int = 8,
             zipf: float = 1.0, taste: float = 3.0, seed: int = 0) -> Dataset:
    """A Dataset with exactly ``n_ratings`` distinct (user, item) ratings.

    ``taste`` sharpens how strongly affinity decides which candidate movies a user rates: at 0
    choices follow popularity alone and no model can beat a popularity list.
    """
    if min(n_users, n_items, n_ratings) <= 0:
        raise ValueError("n_users, n_items and n_ratings must be positive")
    if n_ratings > n_users * n_items // 2:
        raise ValueError(f"{n_ratings} ratings cannot fit {n_users} users x {n_items} items at <=50% density")
    rng = np.random.default_rng(seed)
    user_f = rng.normal(0, 1, (n_users, factors)).astype(np.float32)
    item_f = rng.normal(0, 1, (n_items, factors)).astype(np.float32)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity = rng.permutation(popularity / popularity.sum())
    activity = rng.lognormal(0, 1.0, n_users)
    activity /= activity.sum()
    key = np.zeros(0, dtype=np.int64)  # sorted distinct user * n_items + item
    yield_rate = 0.4  # distinct kept pairs per candidate; re-estimated after each round
    while len(key) < n_ratings:
        # Oversample candidates by activity x popularity; keep each with a taste-dependent probability.
        m = int((n_ratings - len(key)) / yield_rate * 1.1) + 1000
        u = rng.choice(n_users, m, p=activity)
        i = rng.choice(n_items, m, p=popularity)
        affinity = np.einsum("ij,ij->i", user_f[u], item_f[i]) / np.sqrt(factors)
        keep = rng.random(m) < 1 / (1 + np.exp(-taste * affinity))
        before = len(key)
        key = _sorted_distinct(np.concatenate([key, u[keep].astype(np.int64) * n_items + i[keep]]))
        yield_rate = max(0.01, (len(key) - before) / m)
    key = rng.permutation(key)[:n_ratings]
    u, i = key // n_items, key % n_items
    affinity = np.einsum("ij,ij->i", user_f[u], item_f[i]) / np.sqrt(factors)
    stars = np.clip(np.round(3.5 + 1.2 * affinity + rng.normal(0, 0.6, len(u))), 1, 5).astype(np.float32)
    timestamps = 946_684_800 + rng.integers(0, 10 * 365 * 86_400, len(u))
    ratings = pa.table({"user_id": pa.array(u + 1), "item_id": pa.array(i + 1), "rating": pa.array(stars),
                        "timestamp": pa.array(timestamps.astype(np.int64))})
    # Genres follow the leading item factors, so side features correlate with taste.
    g1 = np.argmax(item_f[:, :3], axis=1) * 6 + (np.abs(item_f[:, 3] * 3).astype(int) % 6)
    g2 = (g1 + 1 + np.argmax(item_f[:, 4:7], axis=1)) % len(GENRES)
    genres = [[GENRES[a], GENRES[b]] for a, b in zip(g1 % len(GENRES), g2)]
    items = pa.table({"item_id": pa.array(np.arange(1, n_items + 1)),
                      "title": pa.array([f"Movie {j}" for j in range(1, n_items + 1)]),
                      "year": pa.array(rng.integers(1920, 2016, n_items).astype(np.int32)),
                      "genres": pa.array(genres, pa.list_(pa.string()))}, schema=ITEMS_SCHEMA)
    users = pa.table({"user_id": pa.array(np.arange(1, n_users + 1)),
                      "age": pa.array(rng.integers(16, 70, n_users).astype(np.int32)),
                      "gender": pa.array(rng.choice(["M", "F"], n_users)),
                      "occupation": pa.array(rng.choice(OCCUPATIONS, n_users))}, schema=USERS_SCHEMA)
    return Dataset(f"synthetic-{n_users}u-{n_items}i-{n_ratings}r", ratings.cast(RATINGS_SCHEMA), items, users)


def ml20m_like(n_ratings: int, seed: int = 0) -> Dataset:
    """ML-20M's shape scaled to ``n_ratings``: users grow linearly, movies with the square root,
    which keeps small versions dense enough to learn from and the full size exactly ML-20M's."""
    if n_ratings <= 0:
        raise ValueError(f"n_ratings must be positive, got {n_ratings}")
    scale = n_ratings / ML20M_SHAPE["n_ratings"]
    n_users = max(100, round(ML20M_SHAPE["n_users"] * scale))
    n_items = max(100, round(ML20M_SHAPE["n_items"] * min(1.0, scale) ** 0.5))
    return generate(n_users, n_items, n_ratings, seed=seed)
