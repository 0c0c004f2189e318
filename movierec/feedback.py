"""The interaction store: ratings users give through the REST API (``POST /ratings``), kept for
serving (a known user's just-rated movies leave their recommendations; a new user is recommended
from what they rated) and for the next training run.

SQLite by default, from Python's standard library: embedded, nothing to set up, and in the light
install. WAL mode lets readers go on while one writer writes, and a busy timeout makes concurrent
writers (several server processes on one file) wait for each other instead of failing. Or the
same table in PostgreSQL (``postgresql://user@host/db``, through psycopg: ``movierec[postgres]``;
the password from PGPASSWORD or ~/.pgpass), for servers on several machines. A rating is
identified by (user, movie, timestamp): storing the same one twice keeps one row, so a client may
retry a request whose answer it did not get.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from movierec.ids import MAX_ID

TABLE = "movierec_feedback"  # not "ratings": in PostgreSQL it may share a database with the training data
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    user_id BIGINT NOT NULL,
    movie_id BIGINT NOT NULL,
    rating REAL NOT NULL CHECK (rating >= 0.5 AND rating <= 5),
    timestamp BIGINT NOT NULL,
    PRIMARY KEY (user_id, movie_id, timestamp)
)
"""
POSTGRES = ("postgresql://", "postgres://")
BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Rating:
    user_id: int
    movie_id: int
    rating: float
    timestamp: int


class InteractionStore:
    """Ratings in a SQLite file or a PostgreSQL database (``location``: a path, or a
    ``postgresql://`` URL without a password); safe to share between threads (one connection per
    thread) and processes (the database's locking)."""

    def __init__(self, location: str | Path):
        self.postgres = str(location).startswith(POSTGRES)
        self.location = str(location) if self.postgres else str(Path(location).expanduser())
        if not self.postgres:
            Path(self.location).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        if not self.postgres:
            self._connection().execute("PRAGMA journal_mode=WAL")
        self._execute(SCHEMA)

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.postgres:
                try:
                    import psycopg
                except ImportError:
                    raise ValueError("a PostgreSQL store needs psycopg: pip install 'movierec[postgres]'") from None
                try:
                    conn = psycopg.connect(self.location, autocommit=True)
                except psycopg.Error as exc:
                    raise ValueError(f"{self.location}: cannot connect ({str(exc).splitlines()[0]})") from None
            else:
                conn = sqlite3.connect(self.location, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
            self._local.conn = conn
        return conn

    def _execute(self, sql: str, params: tuple = ()):
        """``sql`` with ``?`` placeholders, on either database (psycopg's are ``%s``)."""
        return self._connection().execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def add(self, user_id: int, movie_id: int, rating: float, timestamp: int | None = None) -> bool:
        """Store one rating (``timestamp``: seconds, default now); False when that exact rating was
        already stored. Raises ValueError for ids or stars out of range."""
        for name, value in (("user_id", user_id), ("movie_id", movie_id)):
            if not 0 <= value <= MAX_ID:
                raise ValueError(f"{name} {value} out of range, expected an integer from 0 to {MAX_ID}")
        if not 0.5 <= rating <= 5.0:  # also false for nan
            raise ValueError(f"rating {rating} is not a number from 0.5 to 5")
        when = int(time.time()) if timestamp is None else int(timestamp)
        cur = self._execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (user_id, movie_id, rating, when))
        return cur.rowcount == 1

    def ratings_of(self, user_id: int) -> list[Rating]:
        """The user's stored ratings, oldest first; a movie rated again counts with its latest rating."""
        rows = self._execute(f"SELECT user_id, movie_id, rating, timestamp FROM {TABLE} WHERE user_id = ? "
                             "ORDER BY timestamp", (user_id,)).fetchall()
        latest = {movie: Rating(user, movie, stars, when) for user, movie, stars, when in rows}
        return sorted(latest.values(), key=lambda r: r.timestamp)

    def table(self):
        """Every stored rating as an Arrow table in ``movierec.data.RATINGS_SCHEMA`` (for training;
        imports pyarrow, which serving never needs)."""
        import pyarrow as pa

        from movierec.data import RATINGS_SCHEMA

        rows = self._execute(f"SELECT user_id, movie_id, rating, timestamp FROM {TABLE} ORDER BY timestamp").fetchall()
        columns = list(zip(*rows)) if rows else [[], [], [], []]
        return pa.table(dict(zip(RATINGS_SCHEMA.names, columns)), schema=RATINGS_SCHEMA)

    def count(self) -> int:
        return self._execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
