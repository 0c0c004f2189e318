"""The dataset every source loads into, and the checks and tidying every reader shares.

Every source (the MovieLens layouts, The Movies Dataset, an interactions file, PostgreSQL, the
synthetic generator) ends up as a :class:`Dataset` of three Arrow tables with fixed schemas, so
the rest of the pipeline never cares where the data came from. The readers build on this module
and it imports none of them, so the package has no import cycle.

Every loaded source is also tidied the same way (:func:`tidy`): a (user, movie) pair rated more
than once keeps its latest rating (duplicates would land on both sides of a train/test split),
duplicate movie rows keep the first, and what was dropped or is odd is reported, never silent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from movierec.core.ids import MAX_ID
from movierec.core.movie_features import clean_genres, split_title_year  # noqa: F401 (the readers' and movierec.data's)
from movierec.errors import DataError

RATINGS_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float32()), ("timestamp", pa.int64())]
)
ITEMS_SCHEMA = pa.schema(
    [("item_id", pa.int64()), ("title", pa.string()), ("year", pa.int32()), ("genres", pa.list_(pa.string()))]
)
USERS_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("age", pa.int32()), ("gender", pa.string()), ("occupation", pa.string())]
)

class DataWarning(UserWarning):
    """Input that loads, but not as written (another encoding, dropped rows): said, never silent."""


@dataclass
class Dataset:
    """Ratings plus item and user side information, in the fixed schemas above, and what loading
    had to drop or work around (``duplicates_dropped``, ``warnings``), for logs and cards.
    ``implicit``: the source says only who interacted with what (an interactions file without a
    rating column); every rating is then 1.0 and means "interacted", so the flow trains no rating
    model and reports no rating error.
    ``feedback``: the ratings users sent through the REST API (:func:`with_feedback`), kept apart
    from ``ratings``: the evaluation split is drawn from ``ratings`` alone, and feedback joins the
    training part only (``movierec.data.split.join_training``), so what users send can neither land in
    the test split nor change it."""

    name: str
    ratings: pa.Table
    items: pa.Table
    users: pa.Table
    duplicates_dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    implicit: bool = False
    feedback: pa.Table = field(default_factory=RATINGS_SCHEMA.empty_table)
    feedback_keys: list[dict] = field(default_factory=list)  # the store's rows per API key (with_feedback)

    def meta(self) -> dict:
        """What the tables do not hold, as JSON: kept with them in the artifact and the Parquet cache."""
        return {"name": self.name, "duplicates_dropped": self.duplicates_dropped, "warnings": self.warnings,
                "implicit": self.implicit, "feedback_keys": self.feedback_keys}

    def to_bytes(self) -> dict[str, bytes]:
        """Parquet bytes per table: a compact, library-independent Metaflow artifact."""
        out = {"meta": json.dumps(self.meta()).encode()}
        for key in ("ratings", "items", "users", "feedback"):
            sink = pa.BufferOutputStream()
            pq.write_table(getattr(self, key), sink)
            out[key] = sink.getvalue().to_pybytes()
        return out

    @classmethod
    def from_bytes(cls, blobs: dict[str, bytes]) -> Dataset:
        # "feedback" may be absent: a resumed run's start step ran before it was kept apart
        tables = {k: pq.read_table(pa.BufferReader(blobs[k])) for k in ("ratings", "items", "users", "feedback")
                  if k in blobs}
        return cls(**tables, **json.loads(blobs["meta"]))

    def with_feedback_rows(self) -> pa.Table:
        """The data's ratings, then the feedback's (in that order: the split draws from the first
        ``ratings.num_rows`` rows only), as one table to encode ids over."""
        return pa.concat_tables([self.ratings, self.feedback])

    def head(self, n: int) -> Dataset:
        """The first ``n`` ratings by time, with side tables and feedback kept whole: a small,
        realistic slice."""
        if n <= 0 or n >= self.ratings.num_rows:
            return self
        order = pc.sort_indices(self.ratings, sort_keys=[("timestamp", "ascending"), ("user_id", "ascending")])
        return replace(self, name=self.name + f"[:{n}]", ratings=self.ratings.take(order[:n]))

    def stats(self) -> dict[str, str | float | bool]:
        """Headline statistics for cards and logs (a mean rating only where there are ratings), and
        the data's name (the promotion gate compares models of the same data only)."""
        r = self.ratings
        n_users = len(pc.unique(r["user_id"]))
        n_items = len(pc.unique(r["item_id"]))
        ts = r["timestamp"]
        return {
            "name": self.name,
            "ratings": r.num_rows,
            "users": n_users,
            "items": n_items,
            "density": r.num_rows / max(1, n_users * n_items),
            **({} if self.implicit else {"mean_rating": float(pc.mean(r["rating"]).as_py() or 0.0)}),
            "first_timestamp": int(pc.min(ts).as_py() or 0),
            "last_timestamp": int(pc.max(ts).as_py() or 0),
            "items_with_metadata": self.items.num_rows,
            "users_with_features": self.users.num_rows,
            "duplicate_ratings_dropped": self.duplicates_dropped,
            "feedback_ratings": self.feedback.num_rows,
            "implicit": self.implicit,
        }


def check_file(path: Path) -> None:
    """A missing or empty file is a DataError naming it, before a parser whose message would not."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def line_of_row(path: Path, row: int, header: bool, encoding: str = "utf8") -> int:
    """1-based file line of the ``row``-th data row; pyarrow skips blank lines, so we must too."""
    lines = path.read_bytes().decode(encoding, errors="replace").splitlines()
    seen = -1
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        seen += bool(line.strip())
        if seen == row:
            return number
    return row + (2 if header else 1)


def _where(source: Path | str, rows: np.ndarray, header: bool) -> str:
    """Where the first marked row of ``source`` is, for a message: its line in a text file, its row
    number in a Parquet file or a database query's result."""
    row = int(np.flatnonzero(rows)[0])
    if isinstance(source, Path) and source.suffix.lower() != ".parquet" and source.is_file():
        return f"{source}, line {line_of_row(source, row, header)}"
    return f"{source}, row {row + 1}"


def check_ids(path: Path | str, table: pa.Table, columns: tuple[str, ...], header: bool = True) -> None:
    """Every id in ``columns`` must be in the range every entry point accepts (``movierec.core.ids``)."""
    for column in columns:
        ids = table[column].to_numpy()
        bad = (ids < 0) | (ids > MAX_ID)
        if bad.any():
            raise DataError(f"{_where(path, bad, header)}: {column} {ids[bad][0]} out of range, "
                            f"expected an integer from 0 to {MAX_ID}")


def validate_ratings(path: Path | str, table: pa.Table, header: bool = True) -> pa.Table:
    """``table``: a ratings file's user, movie, rating and timestamp columns, in that order and by
    the file's own names (so messages name the columns the user sees), checked and renamed."""
    user, item, rating, _ = table.column_names
    ratings = table[rating].to_numpy()
    if np.isnan(ratings).any():
        raise DataError(f"{_where(path, np.isnan(ratings), header)}: {rating} is not a number "
                        "(nan), expected a number from 0.5 to 5")
    bad = ~((ratings >= 0.5) & (ratings <= 5.0))
    if bad.any():
        raise DataError(f"{_where(path, bad, header)}: {rating} {float(ratings[bad][0]):g} out of "
                        "range, expected a number from 0.5 to 5")
    check_ids(path, table, (user, item), header)
    return table.rename_columns(RATINGS_SCHEMA.names).cast(RATINGS_SCHEMA)


def items_table(ids: pa.Array, titles: list[str], years: list[int | None], genres: list[list[str]]) -> pa.Table:
    """The movies table in ``ITEMS_SCHEMA`` from its columns, built the same way by every reader."""
    return pa.table(
        {
            "item_id": pa.array(ids, pa.int64()),
            "title": pa.array(titles, pa.string()),
            "year": pa.array(years, pa.int32()),
            "genres": pa.array(genres, pa.list_(pa.string())),
        },
        schema=ITEMS_SCHEMA,
    )


def drop_duplicate_ratings(ratings: pa.Table) -> tuple[pa.Table, int]:
    """Each (user, movie) pair once, with its latest rating (by timestamp, then by position in the
    file), rows otherwise in their order; and how many rows were dropped. A pair rated twice
    would otherwise land on both sides of a random split, and the test set would leak."""
    if ratings.group_by(["user_id", "item_id"]).aggregate([]).num_rows == ratings.num_rows:
        return ratings, 0  # the usual case, found without sorting
    user, item, ts = (ratings[c].to_numpy() for c in ("user_id", "item_id", "timestamp"))
    order = np.lexsort((np.arange(len(user)), ts, item, user))
    u, i = user[order], item[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    keep = np.sort(order[last])
    return ratings.take(keep), ratings.num_rows - len(keep)


def tidy(dataset: Dataset) -> Dataset:
    """The loaded data with duplicate ratings and movie rows dropped, and every oddity as a warning
    (see the module docstring)."""
    notes = list(dataset.warnings)
    ratings, dropped = drop_duplicate_ratings(dataset.ratings)
    if dropped:
        notes.append(f"{dropped:,} duplicate (user, movie) ratings dropped, keeping each pair's latest")
    items = dataset.items
    ids = items["item_id"].to_numpy()
    first = np.unique(ids, return_index=True)[1]
    if len(first) < len(ids):
        notes.append(f"{len(ids) - len(first):,} movie rows repeat an earlier movie id: the first of each is kept")
        items = items.take(np.sort(first))
    rated = np.unique(ratings["item_id"].to_numpy())
    unknown = int((~np.isin(rated, ids)).sum())
    if unknown:
        notes.append(f"{unknown:,} of {len(rated):,} rated movies have no row in the movies file: they are "
                     "recommended without title, genres or year")
    return replace(dataset, ratings=ratings, items=items, duplicates_dropped=dataset.duplicates_dropped + dropped,
                   warnings=notes)


def cast_columns(label: str, table: pa.Table, types: dict[str, pa.DataType], nullable: tuple[str, ...] = ()
                 ) -> pa.Table:
    """``table``'s ``types`` columns cast, in that order, or a DataError naming ``label`` (a file,
    a query), the column and, for an empty value outside ``nullable``, the row. A time column may
    be a timestamp or a date: it is taken as seconds since 1970 whatever its unit (a Parquet
    ``timestamp[ns]`` cast as it is would be nanoseconds). A true/false column is refused where a
    number is expected: cast, it would make every id 0 or 1. A column asked for as a list of
    strings may be text (the caller splits it)."""
    columns = []
    for name, typ in types.items():
        column = table[name]
        if pa.types.is_list(typ) and not pa.types.is_list(column.type):
            typ = pa.string()
        if typ == pa.int64() and (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
            column = pc.divide(column.cast(pa.timestamp("us")).cast(pa.int64()), 1_000_000)
        if pa.types.is_boolean(column.type) and not pa.types.is_boolean(typ):
            raise DataError(f"{label}: column '{name}' is bool (true/false), expected {typ}")
        try:
            columns.append(column.cast(typ))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{label}: column '{name}' is {column.type}, expected {typ}") from None
        if columns[-1].null_count and name not in nullable:
            row = int(np.flatnonzero(columns[-1].is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{label}, row {row + 1}: column '{name}' is empty, expected {typ}")
    return pa.table(dict(zip(types, columns)))


def with_feedback(dataset: Dataset, feedback: pa.Table, origin: str, leave_out: frozenset[str] = frozenset()
                  ) -> Dataset:
    """``dataset`` with the ratings users sent (``movierec.serving.store``, from ``origin``) as its
    ``feedback``, apart from its ratings: they join training only (``movierec.data.split.join_training``).
    ``feedback`` may have more columns than the four of ``RATINGS_SCHEMA``; those are taken by
    name. A pair rated more than once keeps its latest rating. A rating of a movie the data does
    not know (neither in its movies table nor rated in it: e.g. removed from the next export) is
    dropped and counted, not an error, so one stale rating cannot stop every retrain.
    Into implicit-only data a rating above 2.5 stars goes as an interaction (1.0), one of 2.5 or
    less is left out: such data records what users chose, and a dislike is no choice to learn from.
    ``written_by`` (the API key that wrote a row, '' for none): the rows of each key are counted
    (``feedback_keys``, for the start card), and those of the keys in ``leave_out`` dropped before
    anything else, so the ratings of a key found sending fake ones never train."""
    if feedback.num_rows == 0:
        return replace(dataset, warnings=[*dataset.warnings, f"{origin}: no ratings yet"])
    missing = [name for name in RATINGS_SCHEMA.names if name not in feedback.column_names]
    if missing:
        raise DataError(f"{origin}: the ratings store has no column(s) {', '.join(missing)}, expected "
                        f"{', '.join(RATINGS_SCHEMA.names)}")
    writers = (feedback["written_by"].to_numpy(zero_copy_only=False).astype(str)
               if "written_by" in feedback.column_names else np.full(feedback.num_rows, ""))
    keys, counts = np.unique(writers, return_counts=True)
    per_key = [{"key": key or "(no key)", "ratings": int(n), "training": key not in leave_out}
               for key, n in zip(keys, counts)]
    notes = [f"no ratings of key {key or '(no key)'} to leave out" for key in sorted(leave_out - set(keys))]
    if leave_out:
        dropped = np.isin(writers, list(leave_out))
        notes.append(f"{int(dropped.sum()):,} ratings of {len(leave_out)} key(s) left out (--feedback-leave-out)")
        feedback = feedback.filter(pa.array(~dropped))
    feedback, repeated = drop_duplicate_ratings(feedback.select(RATINGS_SCHEMA.names).cast(RATINGS_SCHEMA))
    notes += [f"{repeated:,} earlier ratings of a movie the same user rated again left out"] if repeated else []
    if dataset.implicit:
        liked = pc.greater(feedback["rating"], 2.5)
        notes.append(f"as interactions: the data has no ratings; {feedback.num_rows - pc.sum(liked).as_py():,} of "
                     "2.5 stars or less left out")
        feedback = feedback.filter(liked)
        feedback = feedback.set_column(2, "rating", pa.array(np.ones(feedback.num_rows, np.float32)))
    movies = feedback["item_id"].to_numpy()
    unknown = ~np.isin(movies, np.concatenate([dataset.items["item_id"].to_numpy(),
                                               dataset.ratings["item_id"].to_numpy()]))
    if unknown.any():
        notes.append(f"{int(unknown.sum()):,} ratings of movies not in the data dropped (first: movie "
                     f"{int(movies[unknown][0])})")
        feedback = feedback.filter(pa.array(~unknown))
    added = (f"{origin}: {feedback.num_rows:,} ratings users sent added, for training only (the split leaves out "
             "those of its test pairs)")
    return replace(dataset, feedback=feedback, feedback_keys=per_key,
                   warnings=[*dataset.warnings, added + (f" ({'; '.join(notes)})" if notes else "")])
