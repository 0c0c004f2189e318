"""The interaction store: ratings users give through the REST API (``POST /ratings``), kept for
serving (a known user's just-rated movies leave their recommendations; a new user is recommended
from what they rated) and for the next training run.

SQLite by default, from Python's standard library: embedded, nothing to set up, and in the light
install. WAL mode lets readers go on while one writer writes, and a busy timeout makes concurrent
writers (several server processes on one file) wait for each other instead of failing. Or the
same table in PostgreSQL (``postgresql://user@host/db``, through psycopg: ``movierec[postgres]``;
the password from PGPASSWORD or ~/.pgpass), for servers on several machines.

Each row is one rating as it was given: a user's latest rating of a movie is the one that counts.
Sending the rating a movie already has stores nothing (so a client may retry a request whose
answer it did not get); a different one is a correction, stored as the latest even when it comes
within the same second, or after a rating stamped in the future (``timestamp`` is part of the key,
so a correction goes one second past the rating it replaces). ``written_by`` names the API key
that wrote a row (``movierec.serving.access``; '' for rows written before keys, or by the library).

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

from movierec.core.ids import MAX_ID
from movierec.core.settings import database_url_problem, redact_url

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

TABLE = "movierec_feedback"  # not "ratings": in PostgreSQL it may share a database with the training data
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    user_id BIGINT NOT NULL,
    movie_id BIGINT NOT NULL,
    rating REAL NOT NULL CHECK (rating >= 0.5 AND rating <= 5),
    timestamp BIGINT NOT NULL,
    written_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, movie_id, timestamp)
)
"""
# A user's latest ratings, newest first, without sorting all of theirs (serving reads only the latest)
INDEX = f"{TABLE}_user_time ON {TABLE} (user_id, timestamp)"
POSTGRES = ("postgresql://", "postgres://")
LATEST = 1000  # how many of a user's latest ratings serving reads: a POST /recommendations history's limit too
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
    """A statement's rows, row count and column names, read before its connection goes back to
    the pool."""

    rows: list[tuple]
    rowcount: int
    columns: tuple[str, ...] = ()

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


@dataclass(frozen=True)
class Change:
    """What storing a rating did: ``stored`` is false when the movie already had that rating
    (nothing written); ``previous`` is the movie's latest rating by the user before (None: there
    was none; the same rating when nothing was stored); ``timestamp`` is the latest row's."""

    stored: bool
    previous: float | None
    timestamp: int

    @property
    def correction(self) -> bool:
        return self.stored and self.previous is not None


def _names(description: tuple | None) -> tuple[str, ...]:
    """A cursor's column names (either driver's ``description``; None for a statement without rows)."""
    return tuple(d[0] for d in description or ())


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
        self._migrate()

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
                return Result(cur.fetchall(), cur.rowcount, _names(cur.description))
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.label}: {exc}") from exc
        import psycopg
        from psycopg_pool import PoolTimeout

        sql = sql.replace("?", "%s")
        for _ in range(2):  # a connection dropped under the statement: once more, on a fresh one
            try:
                with self._pool.connection() as conn:  # checked by the pool just before
                    cur = conn.execute(sql, params)
                    return Result(cur.fetchall() if cur.description else [], cur.rowcount, _names(cur.description))
            except PoolTimeout as exc:
                raise StoreError(f"{self.label}: no connection within {POOL_WAIT:g} s (is PostgreSQL up?)") from exc
            except psycopg.OperationalError as exc:  # each statement is one idempotent transaction
                dropped = exc
        raise StoreError(f"{self.label}: {str(dropped).strip().splitlines()[0]}") from dropped

    def _migrate(self) -> None:
        """Bring a table written by an earlier version up to this one: the ``written_by`` column
        (its rows: '') and the index serving reads a user's latest ratings by. Another process
        may do the same at the same moment: a column it added first is no error."""
        if "written_by" not in self._execute(f"SELECT * FROM {TABLE} LIMIT 0").columns:
            add = f"ALTER TABLE {TABLE} ADD COLUMN {'IF NOT EXISTS ' if self.postgres else ''}written_by " \
                  "TEXT NOT NULL DEFAULT ''"
            try:
                self._execute(add)
            except StoreError as exc:  # SQLite has no IF NOT EXISTS here
                if "duplicate column" not in str(exc):
                    raise
        # PostgreSQL builds the index CONCURRENTLY (outside a transaction: the pool is autocommit):
        # a plain build locks the table against writes while it reads every row, so the first start
        # against a large table stopped the running servers' POST /ratings for as long.
        self._execute(f"CREATE INDEX {'CONCURRENTLY ' if self.postgres else ''}IF NOT EXISTS {INDEX}")

    def rate(self, user_id: int, movie_id: int, rating: float, timestamp: int | None = None,
             written_by: str = "") -> Change:
        """Store one rating (``timestamp``: seconds, default now) unless it is the movie's latest
        rating by that user already; a different one is stored as the latest, at least one second
        after the rating it replaces. ``written_by``: the API key's id. Raises ValueError for ids
        or stars out of range."""
        for name, value in (("user_id", user_id), ("movie_id", movie_id)):
            if not 0 <= value <= MAX_ID:
                raise ValueError(f"{name} {value} out of range, expected an integer from 0 to {MAX_ID}")
        if not 0.5 <= rating <= 5.0:  # also false for nan
            raise ValueError(f"rating {rating} is not a number from 0.5 to 5")
        when = int(time.time()) if timestamp is None else int(timestamp)
        # Another writer may store a rating of the same movie between the read and the insert: the
        # insert then meets its timestamp (the key) and stores nothing, and the read is made again.
        # So may this one: an insert committed on a connection that dropped before its reply is
        # run again by _execute, and meets its own row. The read then finds the row it tried to
        # write (its stars, its key, its timestamp) and answers stored, as the write happened.
        tried: tuple[int, float | None] | None = None  # the (timestamp, previous) an insert met a row at
        for _ in range(10):
            latest = self._execute(f"SELECT rating, timestamp, written_by FROM {TABLE} WHERE user_id = ? "
                                   "AND movie_id = ? ORDER BY timestamp DESC LIMIT 1", (user_id, movie_id)).fetchone()
            if latest is not None and abs(latest[0] - rating) < 1e-6:  # PostgreSQL's REAL: float32
                if tried is not None and (latest[1], latest[2]) == (tried[0], written_by):
                    return Change(True, tried[1], tried[0])
                return Change(False, latest[0], latest[1])
            previous = None if latest is None else latest[0]
            at = when if latest is None else max(when, latest[1] + 1)
            cur = self._execute(f"INSERT INTO {TABLE} (user_id, movie_id, rating, timestamp, written_by) "
                                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                (user_id, movie_id, rating, at, written_by))
            if cur.rowcount == 1:
                return Change(True, previous, at)
            tried = (at, previous)
        raise RuntimeError(f"user {user_id}'s rating of movie {movie_id}: other writers kept storing ratings of it")

    def add(self, user_id: int, movie_id: int, rating: float, timestamp: int | None = None) -> bool:
        """:meth:`rate`, answering only whether a row was written (False: the movie already had
        that rating)."""
        return self.rate(user_id, movie_id, rating, timestamp).stored

    def ratings_of(self, user_id: int, latest: int = LATEST) -> list[Rating]:
        """The user's stored ratings among their ``latest`` ones (by the index: a user with a
        million rows costs what one with ``latest`` does), oldest first; a movie rated again
        counts with its latest rating."""
        rows = self._execute(f"SELECT user_id, movie_id, rating, timestamp FROM {TABLE} WHERE user_id = ? "
                             "ORDER BY timestamp DESC LIMIT ?", (user_id, latest)).fetchall()
        newest: dict[int, Rating] = {}
        for user, movie, stars, when in rows:
            newest.setdefault(movie, Rating(user, movie, stars, when))
        return sorted(newest.values(), key=lambda r: r.timestamp)

    def table(self):
        """Every stored rating as an Arrow table: ``movierec.data.RATINGS_SCHEMA``'s columns, then
        ``written_by`` (utf8, the key that wrote the row), for training (imports pyarrow, which
        serving never needs)."""
        import pyarrow as pa

        from movierec.data import RATINGS_SCHEMA

        schema = RATINGS_SCHEMA.append(pa.field("written_by", pa.string()))
        rows = self._execute(f"SELECT user_id, movie_id, rating, timestamp, written_by FROM {TABLE} "
                             "ORDER BY timestamp").fetchall()
        columns = list(zip(*rows)) if rows else [[]] * len(schema)
        return pa.table(dict(zip(schema.names, columns)), schema=schema)

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
