"""Ratings, movies and users read from PostgreSQL, one query each, through ADBC's driver."""

from __future__ import annotations

import urllib.parse

import pyarrow as pa

from movierec.core.settings import redact_url
from movierec.data.core import (
    ITEMS_SCHEMA,
    RATINGS_SCHEMA,
    USERS_SCHEMA,
    DataError,
    Dataset,
    cast_columns,
    check_ids,
    clean_genres,
    items_table,
    split_title_year,
    tidy,
    validate_ratings,
)


def _query(conn: object, label: str, query: str, names: tuple[str, ...]) -> pa.Table:
    """The result of ``query`` as Arrow, its columns renamed to ``names`` by position; a query
    that fails or returns other columns is a DataError naming it."""
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            table = cur.fetch_arrow_table()
    except Exception as exc:  # the driver's errors (adbc_driver_manager.Error and its kinds)
        conn.rollback()
        raise DataError(f"{label}: {query!r} failed: {str(exc).splitlines()[0]}") from None
    if table.num_columns != len(names):
        raise DataError(f"{label}: {query!r} returns {table.num_columns} column(s) ({', '.join(table.column_names)}), "
                        f"expected {len(names)}: {', '.join(names)}")
    return table.rename_columns(list(names))


def load_postgres(url: str, ratings_query: str, movies_query: str = "", users_query: str = "") -> Dataset:
    """Ratings, movies and users from PostgreSQL, one query each, read straight into Arrow by ADBC's
    PostgreSQL driver (libpq's binary COPY; faster than psycopg's, see benchmarks/postgres.py), and
    checked and tidied like files. ``url`` holds no password: libpq reads PGPASSWORD or ~/.pgpass."""
    import adbc_driver_postgresql.dbapi as pg

    where, shown = urllib.parse.urlsplit(url), redact_url(url)  # messages print the URL without a password
    try:
        conn = pg.connect(url)
    except Exception as exc:
        raise DataError(f"{shown}: cannot connect ({str(exc).splitlines()[0]})") from None
    with conn:
        raw = _query(conn, f"{shown} (ratings query)", ratings_query, ("user_id", "item_id", "rating", "timestamp"))
        ratings = validate_ratings(f"{shown} (ratings query)", cast_columns(f"{shown} (ratings query)", raw, dict(zip(
            RATINGS_SCHEMA.names, RATINGS_SCHEMA.types))))
        items = ITEMS_SCHEMA.empty_table()
        if movies_query:
            label = f"{shown} (movies query)"
            movies = _query(conn, label, movies_query, ("item_id", "title", "genres"))
            listed = pa.types.is_list(movies["genres"].type)
            movies = cast_columns(label, movies.set_column(2, "genres", movies["genres"].fill_null(
                [] if listed else "")), {"item_id": pa.int64(), "title": pa.string(),
                                         "genres": pa.list_(pa.string()) if listed else pa.string()})
            check_ids(label, movies, ("item_id",))
            titles, years = split_title_year(movies["title"].to_pylist())
            genres = movies["genres"].to_pylist() if listed else clean_genres(movies["genres"].to_pylist(), "|")
            items = items_table(movies["item_id"], titles, years, genres)
        users = USERS_SCHEMA.empty_table()
        if users_query:
            label = f"{shown} (users query)"
            users = cast_columns(label, _query(conn, label, users_query, tuple(USERS_SCHEMA.names)),
                          dict(zip(USERS_SCHEMA.names, USERS_SCHEMA.types)))
    return tidy(Dataset(where.path.strip("/") or "postgresql", ratings, items, users))
