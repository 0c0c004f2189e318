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
that wrote a row (``movierec.access``; '' for rows written before keys, or by the library).
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
    written_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, movie_id, timestamp)
)
"""
# A user's latest ratings, newest first, without sorting all of theirs (serving reads only the latest)
INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_user_time ON {TABLE} (user_id, timestamp)"
POSTGRES = ("postgresql://", "postgres://")
LATEST = 1000  # how many of a user's latest ratings serving reads: a POST /recommendations history's limit too
BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Rating:
    user_id: int
    movie_id: int
    rating: float
    timestamp: int


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
        self._migrate()

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

    def _migrate(self) -> None:
        """Bring a table written by an earlier version up to this one: the ``written_by`` column
        (its rows: '') and the index serving reads a user's latest ratings by. Another process
        may do the same at the same moment: a column it added first is no error."""
        columns = [d[0] for d in self._execute(f"SELECT * FROM {TABLE} LIMIT 0").description]
        if "written_by" not in columns:
            add = f"ALTER TABLE {TABLE} ADD COLUMN {'IF NOT EXISTS ' if self.postgres else ''}written_by " \
                  "TEXT NOT NULL DEFAULT ''"
            try:
                self._execute(add)
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
        self._execute(INDEX)

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
        for _ in range(10):
            latest = self._execute(f"SELECT rating, timestamp FROM {TABLE} WHERE user_id = ? AND movie_id = ? "
                                   "ORDER BY timestamp DESC LIMIT 1", (user_id, movie_id)).fetchone()
            if latest is not None and abs(latest[0] - rating) < 1e-6:  # PostgreSQL's REAL: float32
                return Change(False, latest[0], latest[1])
            at = when if latest is None else max(when, latest[1] + 1)
            cur = self._execute(f"INSERT INTO {TABLE} (user_id, movie_id, rating, timestamp, written_by) "
                                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                (user_id, movie_id, rating, at, written_by))
            if cur.rowcount == 1:
                return Change(True, None if latest is None else latest[0], at)
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
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
