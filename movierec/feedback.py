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

PostgreSQL connections come from a small shared pool (psycopg_pool, at most ``POOL_SIZE``): each
is checked before it is handed out, and a statement whose connection drops under it (a server
restart) runs once more on a fresh one, so a restarted database is used again without restarting
the server. A SQLite file is created readable by its owner only: it holds what users rated.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from movierec.ids import MAX_ID
from movierec.settings import database_url_problem, redact_url

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

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
# PostgreSQL connections a store holds at most. Serving's store calls run in anyio's worker threads
# (40): one connection per thread held 41 per server; statements take a millisecond, so a few
# connections serve every thread, and many servers stay within the database's max_connections.
POOL_SIZE = 4
CONNECT_TIMEOUT = 5  # seconds to reach PostgreSQL (libpq's connect_timeout)
# Seconds a statement waits for a free or new connection before the store counts as down: a
# statement takes milliseconds, and a known user's recommendations wait this long in an outage.
POOL_WAIT = 3.0


@dataclass(frozen=True)
class Rating:
    user_id: int
    movie_id: int
    rating: float
    timestamp: int


class StoreError(ValueError):
    """The store cannot be opened, read or written: what is wrong and where (a URL's password
    redacted), never a bug of the caller's (those stay the database's own errors)."""


@dataclass(frozen=True)
class Result:
    """A statement's rows and row count, read before its connection goes back to the pool."""

    rows: list[tuple]
    rowcount: int

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


class InteractionStore:
    """Ratings in a SQLite file or a PostgreSQL database (``location``: a path, or a
    ``postgresql://`` URL without a password); safe to share between threads (SQLite: a connection
    per thread; PostgreSQL: a checked pool of at most ``POOL_SIZE``) and processes (the database's
    locking). Raises StoreError when the location cannot be opened as a store."""

    def __init__(self, location: str | Path):
        self.postgres = str(location).startswith(POSTGRES)
        self.location = str(location) if self.postgres else str(Path(location).expanduser())
        self.label = redact_url(self.location)  # what messages print
        if self.postgres:
            if (why := database_url_problem(self.location)) is not None:
                raise StoreError(f"{self.label}: {why}")
            self._pool = self._open_pool()
        else:
            self._local = threading.local()
            self._open_file()
        self._execute(SCHEMA)

    def _open_file(self) -> None:
        """Create the SQLite file if absent, mode 0600 (its WAL and shared-memory files take the
        same mode), and switch it to WAL; a folder or a file that is not SQLite is a StoreError."""
        path = Path(self.location)
        if path.is_dir():
            raise StoreError(f"{path}: is a folder, expected a SQLite file (created if absent)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # an existing file keeps its mode
            self._connection().execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise StoreError(f"{path}: cannot be opened as a SQLite ratings store ({exc})") from None

    def _open_pool(self) -> ConnectionPool:
        """The pool, after one direct connection: its error says why PostgreSQL cannot be reached
        (a pool's says only that it timed out)."""
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StoreError("a PostgreSQL store needs psycopg and psycopg-pool: pip install 'movierec[postgres]'"
                             ) from None
        try:
            psycopg.connect(self.location, connect_timeout=CONNECT_TIMEOUT).close()
        except psycopg.Error as exc:
            raise StoreError(f"{self.label}: cannot connect ({str(exc).strip().splitlines()[0]})") from None
        # reconnect_timeout: the pool retries a failed connection with growing pauses, then gives
        # up and the next statement starts a fresh attempt. Its default (5 min) let the pauses
        # grow past POOL_WAIT, so statements still failed for seconds after the database was back.
        return ConnectionPool(self.location, min_size=1, max_size=POOL_SIZE, timeout=POOL_WAIT,
                              reconnect_timeout=POOL_WAIT, open=True, check=ConnectionPool.check_connection,
                              kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT}, name="movierec-store")

    def _connection(self) -> sqlite3.Connection:
        """This thread's SQLite connection (a SQLite connection is cheap and must stay in its thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.location, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._local.conn = conn
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
        return conn

    def _execute(self, sql: str, params: tuple = ()) -> Result:
        """``sql`` with ``?`` placeholders, on either database (psycopg's are ``%s``). A database
        that cannot be reached, or (SQLite) stays locked past the busy timeout, is a StoreError."""
        if not self.postgres:
            try:
                cur = self._connection().execute(sql, params)
                return Result(cur.fetchall(), cur.rowcount)
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.label}: {exc}") from exc
        import psycopg
        from psycopg_pool import PoolTimeout

        sql = sql.replace("?", "%s")
        for _ in range(2):  # a connection dropped under the statement: once more, on a fresh one
            try:
                with self._pool.connection() as conn:  # checked by the pool just before
                    cur = conn.execute(sql, params)
                    return Result(cur.fetchall() if cur.description else [], cur.rowcount)
            except PoolTimeout as exc:
                raise StoreError(f"{self.label}: no connection within {POOL_WAIT:g} s (is PostgreSQL up?)") from exc
            except psycopg.OperationalError as exc:  # each statement is one idempotent transaction
                dropped = exc
        raise StoreError(f"{self.label}: {str(dropped).strip().splitlines()[0]}") from dropped

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
        """Close the pool (PostgreSQL) or this thread's connection (SQLite)."""
        if self.postgres:
            self._pool.close()
            return
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
