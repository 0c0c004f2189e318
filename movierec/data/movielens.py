"""The MovieLens layouts: ML-100K as recbole's atomic files and as GroupLens' ``u.*`` files,
ml-1m's and ml-10m's ``::`` files, and the CSV layout of ml-latest(-small), ml-20m and ml-25m."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from movierec.data.core import (
    USERS_SCHEMA,
    Dataset,
    check_ids,
    clean_genres,
    items_table,
    split_title_year,
    validate_ratings,
)
from movierec.data.delimited import read_table


def load_recbole_ml100k(directory: Path) -> Dataset:
    """ML-100K in recbole's atomic-file layout (tab-separated, typed headers like ``user_id:token``)."""
    d = Path(directory)
    inter = read_table(
        d / "ml-100k.inter",
        {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.float64()},
        delimiter="\t",
        typed_header=True,
    )
    # recbole stores timestamps as floats; whole seconds are all we use.
    inter = inter.set_column(3, "timestamp", pc.cast(pc.floor(inter["timestamp"]), pa.int64()))
    ratings = validate_ratings(d / "ml-100k.inter", inter)
    item = read_table(
        d / "ml-100k.item",
        {"item_id": pa.int64(), "movie_title": pa.string(), "release_year": pa.string(), "class": pa.string()},
        delimiter="\t",
        typed_header=True,
    )
    check_ids(d / "ml-100k.item", item, ("item_id",))
    # A few titles carry the year inside the title instead of the release_year column.
    titles, title_years = split_title_year(item["movie_title"].to_pylist())
    years = [int(y) if y.isdigit() else ty for y, ty in zip(item["release_year"].to_pylist(), title_years)]
    items = items_table(item["item_id"], titles, years, clean_genres(item["class"].to_pylist(), " "))
    users = read_table(
        d / "ml-100k.user",
        {"user_id": pa.int64(), "age": pa.int32(), "gender": pa.string(), "occupation": pa.string()},
        delimiter="\t",
        typed_header=True,
    )
    return Dataset("ml-100k", ratings, items, users.select(USERS_SCHEMA.names).cast(USERS_SCHEMA))


def load_grouplens_csv(directory: Path) -> Dataset:
    """ml-latest-small / ml-20m / ml-25m: ``ratings.csv`` + ``movies.csv`` (no user features)."""
    d = Path(directory)
    ratings = read_table(
        d / "ratings.csv",
        {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()},
    )
    movies = read_table(d / "movies.csv", {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()})
    check_ids(d / "movies.csv", movies, ("movieId",))
    titles, years = split_title_year(movies["title"].to_pylist())
    items = items_table(movies["movieId"], titles, years, clean_genres(movies["genres"].to_pylist(), "|"))
    return Dataset(d.name, validate_ratings(d / "ratings.csv", ratings), items, USERS_SCHEMA.empty_table())


def load_ml1m(directory: Path) -> Dataset:
    """ml-1m: headerless ``::``-separated ``ratings.dat``, ``movies.dat`` (latin-1 in GroupLens' copy,
    UTF-8 in some re-distributions: both read right) and ``users.dat``."""
    d = Path(directory)
    dat = {"delimiter": "\t", "separator": "::"}
    ratings = read_table(
        d / "ratings.dat",
        {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()},
        names=["user_id", "item_id", "rating", "timestamp"],
        **dat,
    )
    movies = read_table(
        d / "movies.dat",
        {"item_id": pa.int64(), "title": pa.string(), "genres": pa.string()},
        names=["item_id", "title", "genres"],
        warn_fallback=False,
        **dat,
    )
    check_ids(d / "movies.dat", movies, ("item_id",), header=False)
    titles, years = split_title_year(movies["title"].to_pylist())
    items = items_table(movies["item_id"], titles, years, clean_genres(movies["genres"].to_pylist(), "|"))
    users = USERS_SCHEMA.empty_table()
    if (d / "users.dat").exists():
        raw = read_table(
            d / "users.dat",
            {"user_id": pa.int64(), "gender": pa.string(), "age": pa.int32(), "occupation": pa.string()},
            names=["user_id", "gender", "age", "occupation", "zip"],
            **dat,
        )
        users = raw.select(USERS_SCHEMA.names).cast(USERS_SCHEMA)
    return Dataset(d.name, validate_ratings(d / "ratings.dat", ratings, header=False), items, users)


# u.item's genre flags, in GroupLens' order (u.genre lists the same, where present)
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")


def load_grouplens_ml100k(directory: Path) -> Dataset:
    """ML-100K as GroupLens distributes it (ml-100k.zip): headerless tab-separated ``u.data``,
    ``u.item`` (latin-1, ``|``-separated: id, title with its year, release date, video release
    date, IMDb URL, then one 0/1 flag per genre of ``u.genre``) and ``u.user`` (id, age, gender,
    occupation, zip code)."""
    d = Path(directory)
    ratings = read_table(
        d / "u.data",
        {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()},
        names=["user_id", "item_id", "rating", "timestamp"], delimiter="\t",
    )
    genres = list(ML100K_GENRES)
    if (d / "u.genre").is_file():
        genres = [line.split("|")[0] for line in (d / "u.genre").read_text("latin-1").splitlines() if line.strip()]
    flags = [f"{g} (genre flag)" for g in genres]
    item = read_table(
        d / "u.item",
        {"item_id": pa.int64(), "title": pa.string(), "release_date": pa.string(), **dict.fromkeys(flags, pa.int8())},
        names=["item_id", "title", "release_date", "video_release_date", "url", *flags], delimiter="|",
        encodings=("latin-1",),
    )
    check_ids(d / "u.item", item, ("item_id",), header=False)
    titles, years = split_title_year(item["title"].to_pylist())
    released = [int(date[-4:]) if date and date[-4:].isdigit() else None for date in item["release_date"].to_pylist()]
    years = [y if y is not None else r for y, r in zip(years, released)]
    marked = np.stack([item[f].to_numpy() for f in flags], axis=1) > 0
    items = items_table(item["item_id"], titles, years, [[g for g, on in zip(genres, row) if on] for row in marked])
    users = read_table(
        d / "u.user",
        {"user_id": pa.int64(), "age": pa.int32(), "gender": pa.string(), "occupation": pa.string()},
        names=["user_id", "age", "gender", "occupation", "zip"], delimiter="|",
    )
    return Dataset("ml-100k", validate_ratings(d / "u.data", ratings, header=False), items,
                   users.select(USERS_SCHEMA.names).cast(USERS_SCHEMA))
