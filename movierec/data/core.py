"""Loading MovieLens data into one normalised shape.

Every source (the ML-100K copy shipped inside the ``recbole`` wheel, GroupLens' own ML-100K
``u.*`` files, the GroupLens CSV layouts, ml-1m's and ml-10m's ``::`` files, any of them as the
zip GroupLens distributes, the synthetic generator) ends up as a :class:`Dataset` of three Arrow
tables with fixed schemas, so the rest of the pipeline never cares where the data came from.
Files are parsed with pyarrow (fast path) and cached as Parquet; only when pyarrow rejects a file
do we re-scan it line by line, to tell the user the exact file, line and problem.

Every loaded folder is also tidied the same way (:func:`tidy`): a (user, movie) pair rated more
than once keeps its latest rating (duplicates would land on both sides of a train/test split),
duplicate movie rows keep the first, and what was dropped or is odd is reported, never silent.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from movierec.checksums import sha256
from movierec.ids import MAX_ID
from movierec.settings import ColumnSettings, redact_url

RATINGS_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float32()), ("timestamp", pa.int64())]
)
ITEMS_SCHEMA = pa.schema(
    [("item_id", pa.int64()), ("title", pa.string()), ("year", pa.int32()), ("genres", pa.list_(pa.string()))]
)
USERS_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("age", pa.int32()), ("gender", pa.string()), ("occupation", pa.string())]
)

# The ML-100K copy inside the recbole 1.2.1 wheel on PyPI: pinned by the wheel's and each file's hash.
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "ml-100k"

_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


class DataError(ValueError):
    """Bad input data; the message names the file, the line where known, and what was expected."""


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
    training part only (``movierec.split.join_training``), so what users send can neither land in
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

    def _meta(self) -> dict:
        return {"name": self.name, "duplicates_dropped": self.duplicates_dropped, "warnings": self.warnings,
                "implicit": self.implicit, "feedback_keys": self.feedback_keys}

    def to_bytes(self) -> dict[str, bytes]:
        """Parquet bytes per table: a compact, library-independent Metaflow artifact."""
        out = {"meta": json.dumps(self._meta()).encode()}
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

    def stats(self) -> dict[str, float | bool]:
        """Headline statistics for cards and logs (a mean rating only where there are ratings)."""
        r = self.ratings
        n_users = len(pc.unique(r["user_id"]))
        n_items = len(pc.unique(r["item_id"]))
        ts = r["timestamp"]
        return {
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


# --------------------------------------------------------------------------- CSV reading


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT = re.compile(r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|inf)\s*$", re.I)


def _parse_value(text: str, typ: pa.DataType) -> None:
    """Raise ValueError where pyarrow would refuse ``text`` as ``typ`` (stricter than int()/float())."""
    if pa.types.is_integer(typ) and not (_INT.match(text) and -(2**63) <= int(text) < 2**63):
        raise ValueError(text)
    if pa.types.is_floating(typ) and not _FLOAT.match(text):
        raise ValueError(text)


def _line_of_row(path: Path, row: int, header: bool, encoding: str = "utf8") -> int:
    """1-based file line of the ``row``-th data row; pyarrow skips blank lines, so we must too."""
    lines = path.read_bytes().decode(encoding, errors="replace").splitlines()
    seen = -1
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        seen += bool(line.strip())
        if seen == row:
            return number
    return row + (2 if header else 1)


def _locate_bad_line(
    path: Path, text: str, delimiter: str, names: list[str], types: dict[str, pa.DataType], first_line: int
) -> str:
    """Slow path, run only after pyarrow refused a file: find the first offending line and say why."""
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
    consumed = 0  # lines the reader has taken: a quoted field may span several
    while True:
        line = first_line + consumed
        try:
            row = next(reader)
        except StopIteration:
            return f"{path}: could not be parsed"
        except csv.Error as exc:  # the csv module's own limits, e.g. a field over 128 KiB
            if "field larger than field limit" in str(exc):
                return (f"{path}, line {line}: a field longer than {csv.field_size_limit():,} characters (a quote "
                        "opened and never closed makes the rest of the file one field)")
            return f"{path}, line {line}: {exc}"
        consumed = reader.line_num
        if not row:
            continue
        if len(row) != len(names):
            return f"{path}, line {line}: expected {len(names)} fields ({', '.join(names)}), got {len(row)}"
        for name, value in zip(names, row):
            typ = types.get(name)
            if typ is None:
                continue
            try:
                _parse_value(value, typ)
            except ValueError:
                return f"{path}, line {line}: column '{name}' expected {typ}, got {value!r}"


def _first_undecodable(data: bytes, encoding: str) -> tuple[int, int]:
    """(1-based line, byte value) of the first byte that ``encoding`` cannot decode."""
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1, data[exc.start]
    return 0, 0


def read_table(
    path: Path,
    types: dict[str, pa.DataType],
    *,
    delimiter: str = ",",
    names: list[str] | None = None,
    encodings: tuple[str, ...] = ("utf8", "latin-1"),
    separator: str | None = None,
    typed_header: bool = False,
    warn_fallback: bool = True,
    nullable: tuple[str, ...] = (),
) -> pa.Table:
    """Read a delimited file into Arrow with the given column types, or fail with a precise DataError.

    ``names`` gives column names for headerless files; otherwise the header must contain every
    column in ``types``. ``separator`` is a multi-character field separator (ml-1m's ``::``),
    rewritten to ``delimiter`` before parsing because pyarrow takes single characters only.
    ``typed_header`` drops recbole's ``:type`` suffixes from header names. Text is read in the
    first of ``encodings`` it is valid in (UTF-8, then latin-1, which every byte string is): a
    fallback is reported as a DataWarning naming the first line that is not UTF-8, unless
    ``warn_fallback`` is off (a layout whose files are documented as latin-1). Only an
    empty field is a missing value: ``nan`` or ``NULL`` in a number column is reported as such;
    only the ``nullable`` columns may have one.
    """
    _check_file(path)
    if separator:  # small files only (ml-1m): rewrite in memory
        source = pa.py_buffer(path.read_bytes().replace(separator.encode(), delimiter.encode()))
    else:  # parsed straight from the file by pyarrow's multi-threaded reader, no Python-side copy
        source = path
    skip = 0
    if names is None:
        with open(path, "rb") as f:
            header = f.readline().decode(encodings[0], errors="replace").rstrip("\r\n").lstrip("\ufeff")
        if separator:
            header = header.replace(separator, delimiter)
        names = [h.strip().strip('"') for h in header.split(delimiter)]
        if typed_header:
            names = [n.split(":", 1)[0] for n in names]
        missing = [c for c in types if c not in names]
        if missing:
            raise DataError(
                f"{path}, line 1: missing column(s) {', '.join(missing)}; "
                f"expected header with {', '.join(types)}, got {header!r}"
            )
        skip = 1
    quote = '"' if delimiter == "," else False
    for attempt, encoding in enumerate(encodings):
        try:
            table = pacsv.read_csv(
                source,
                read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=16 << 20,
                                               encoding=encoding),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=quote),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                                     null_values=[""], true_values=[], false_values=[]),
            )
            break
        except pa.ArrowInvalid as exc:
            raw = source.to_pybytes() if separator else path.read_bytes()
            line, byte = _first_undecodable(raw, encoding)
            if line and attempt + 1 < len(encodings):
                if warn_fallback:
                    warnings.warn(DataWarning(f"{path}, line {line}: not valid {encoding} (byte 0x{byte:02x}); "
                                              f"read as {encodings[attempt + 1]}"), stacklevel=2)
                continue
            # Slow path, only for broken files: find the first offending line and say why.
            text = raw.decode(encoding, errors="replace")
            body = text.split("\n", 1)[1] if skip and "\n" in text else "" if skip else text
            if not body.strip():
                raise DataError(f"{path}: no data rows") from exc
            raise DataError(_locate_bad_line(path, body, delimiter, names, types, skip + 1)) from exc
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    for name in types:
        nulls = table[name].null_count if name not in nullable else 0
        if nulls:
            first = int(np.flatnonzero(table[name].is_null().to_numpy(zero_copy_only=False))[0])
            line = _line_of_row(path, first, skip == 1, encoding)
            raise DataError(f"{path}, line {line}: column '{name}' is empty, expected {types[name]}")
    return table


def _where(source: Path | str, rows: np.ndarray, header: bool) -> str:
    """Where the first marked row of ``source`` is, for a message: its line in a text file, its row
    number in a Parquet file or a database query's result."""
    row = int(np.flatnonzero(rows)[0])
    if isinstance(source, Path) and source.suffix.lower() != ".parquet" and source.is_file():
        return f"{source}, line {_line_of_row(source, row, header)}"
    return f"{source}, row {row + 1}"


def check_ids(path: Path | str, table: pa.Table, columns: tuple[str, ...], header: bool = True) -> None:
    """Every id in ``columns`` must be in the range every entry point accepts (``movierec.ids``)."""
    for column in columns:
        ids = table[column].to_numpy()
        bad = (ids < 0) | (ids > MAX_ID)
        if bad.any():
            raise DataError(f"{_where(path, bad, header)}: {column} {ids[bad][0]} out of range, "
                            f"expected an integer from 0 to {MAX_ID}")


def _validate_ratings(path: Path | str, table: pa.Table, header: bool = True) -> pa.Table:
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


def split_title_year(titles: list[str]) -> tuple[list[str], list[int | None]]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year keep year None."""
    names, years = [], []
    for t in titles:
        m = _TITLE_YEAR.match(t)
        names.append(m.group(1) if m else t.strip())
        years.append(int(m.group(2)) if m else None)
    return names, years


def _items_table(ids: pa.Array, titles: list[str], years: list[int | None], genres: list[list[str]]) -> pa.Table:
    return pa.table(
        {
            "item_id": pa.array(ids, pa.int64()),
            "title": pa.array(titles, pa.string()),
            "year": pa.array(years, pa.int32()),
            "genres": pa.array(genres, pa.list_(pa.string())),
        },
        schema=ITEMS_SCHEMA,
    )


def _clean_genres(raw: list[str], sep: str) -> list[list[str]]:
    return [[g for g in (s or "").split(sep) if g and g != "(no genres listed)"] for s in raw]


# --------------------------------------------------------------------------- the three layouts


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
    ratings = _validate_ratings(d / "ml-100k.inter", inter)
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
    items = _items_table(item["item_id"], titles, years, _clean_genres(item["class"].to_pylist(), " "))
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
    items = _items_table(movies["movieId"], titles, years, _clean_genres(movies["genres"].to_pylist(), "|"))
    return Dataset(d.name, _validate_ratings(d / "ratings.csv", ratings), items, USERS_SCHEMA.empty_table())


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
    items = _items_table(movies["item_id"], titles, years, _clean_genres(movies["genres"].to_pylist(), "|"))
    users = USERS_SCHEMA.empty_table()
    if (d / "users.dat").exists():
        raw = read_table(
            d / "users.dat",
            {"user_id": pa.int64(), "gender": pa.string(), "age": pa.int32(), "occupation": pa.string()},
            names=["user_id", "gender", "age", "occupation", "zip"],
            **dat,
        )
        users = raw.select(USERS_SCHEMA.names).cast(USERS_SCHEMA)
    return Dataset(d.name, _validate_ratings(d / "ratings.dat", ratings, header=False), items, users)


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
    items = _items_table(item["item_id"], titles, years, [[g for g, on in zip(genres, row) if on] for row in marked])
    users = read_table(
        d / "u.user",
        {"user_id": pa.int64(), "age": pa.int32(), "gender": pa.string(), "occupation": pa.string()},
        names=["user_id", "age", "gender", "occupation", "zip"], delimiter="|",
    )
    return Dataset("ml-100k", _validate_ratings(d / "u.data", ratings, header=False), items,
                   users.select(USERS_SCHEMA.names).cast(USERS_SCHEMA))


def _movies_metadata(path: Path) -> tuple[dict[int, tuple[str, int | None, list[str]]], list[str]]:
    """The Movies Dataset's ``movies_metadata.csv`` as {TMDB id: (title, year, genres)}, and what
    was dropped and why. The file is known to be dirty: overviews with newlines inside quotes, a
    few rows whose columns are shifted (a date where the id belongs), lines with too few fields,
    repeated ids, genres written as Python lists of dicts. Only the columns used are parsed."""
    _check_file(path)
    broken: list[int] = []

    def skip(row: pacsv.InvalidRow) -> str:
        broken.append(row.number or 0)
        return "skip"

    try:
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(block_size=16 << 20),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(include_columns=["id", "title", "release_date", "genres"],
                                                 column_types=dict.fromkeys(
                                                     ["id", "title", "release_date", "genres"], pa.string())))
    except (pa.ArrowInvalid, KeyError) as exc:
        raise DataError(f"{path}: not The Movies Dataset's metadata file, expected columns id, title, release_date "
                        f"and genres ({exc})") from None
    movies: dict[int, tuple[str, int | None, list[str]]] = {}
    bad_id = repeated = bad_genres = 0
    for tmdb, title, date, genres in zip(*(table[c].to_pylist() for c in ("id", "title", "release_date", "genres"))):
        if not (tmdb or "").strip().isdigit():
            bad_id += 1
            continue
        if int(tmdb) in movies:
            repeated += 1
            continue
        try:
            names = [g["name"] for g in ast.literal_eval(genres or "[]")]
        except (ValueError, SyntaxError, TypeError, KeyError):
            names, bad_genres = [], bad_genres + 1
        year = int(date[:4]) if date and date[:4].isdigit() else None
        movies[int(tmdb)] = (title or "", year, names)
    notes = [f"{path.name}: {n:,} {why}" for n, why in (
        (len(broken), "lines with too few or too many fields skipped"),
        (bad_id, "rows without a numeric id dropped (columns shifted in the file)"),
        (repeated, "rows repeating an earlier id dropped (the first is kept)"),
        (bad_genres, "rows with unreadable genres kept without genres")) if n]
    return movies, notes


def load_movies_dataset(directory: Path) -> Dataset:
    """The Movies Dataset (Kaggle): GroupLens ratings (``ratings_small.csv``, or ``ratings.csv``
    where the small one is absent), ``links_small.csv``/``links.csv`` mapping MovieLens ids to
    TMDB ids, and TMDB's ``movies_metadata.csv``, joined through the links; every row dropped on
    the way is counted in the data warnings."""
    d = Path(directory)
    small = (d / "ratings_small.csv").is_file()
    ratings_file, links_file = (d / "ratings_small.csv", d / "links_small.csv") if small else \
        (d / "ratings.csv", d / "links.csv")
    ratings = read_table(
        ratings_file, {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()})
    links = read_table(links_file, {"movieId": pa.int64(), "tmdbId": pa.string()})
    check_ids(links_file, links, ("movieId",))
    movies, notes = _movies_metadata(d / "movies_metadata.csv")
    rows: list[tuple[int, str, int | None, list[str]]] = []
    no_tmdb = no_metadata = 0
    for movie, tmdb in zip(links["movieId"].to_pylist(), links["tmdbId"].to_pylist()):
        tmdb = (tmdb or "").strip().removesuffix(".0")
        if not tmdb.isdigit():
            no_tmdb += 1
        elif int(tmdb) not in movies:
            no_metadata += 1
        else:
            rows.append((movie, *movies[int(tmdb)]))
    notes += [f"{links_file.name}: {n:,} {why}" for n, why in (
        (no_tmdb, "movies without a TMDB id (no title, year or genres for them)"),
        (no_metadata, "movies whose TMDB id is not in movies_metadata.csv (no title, year or genres)")) if n]
    for note in notes:
        warnings.warn(DataWarning(note), stacklevel=2)
    ids, titles, years, genres = (list(column) for column in zip(*rows)) if rows else ([], [], [], [])
    items = _items_table(pa.array(ids, pa.int64()), titles, years, genres)
    return Dataset(d.name, _validate_ratings(ratings_file, ratings), items, USERS_SCHEMA.empty_table())


# layout -> (required files, optional files, loader)
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[Path], Dataset]]] = {
    "recbole": (("ml-100k.inter", "ml-100k.item", "ml-100k.user"), (), load_recbole_ml100k),
    "grouplens-ml100k": (("u.data", "u.item", "u.user"), ("u.genre",), load_grouplens_ml100k),
    "grouplens-csv": (("ratings.csv", "movies.csv"), (), load_grouplens_csv),
    "ml-1m": (("ratings.dat", "movies.dat"), ("users.dat",), load_ml1m),  # ml-10m too: no users.dat there
    # The Movies Dataset as Kaggle ships it has both sizes: the small one is read (see the loader)
    "movies-dataset-small": (("ratings_small.csv", "links_small.csv", "movies_metadata.csv"), (),
                             load_movies_dataset),
    "movies-dataset": (("ratings.csv", "links.csv", "movies_metadata.csv"), (), load_movies_dataset),
}


def detect_layout(directory: Path) -> str:
    """Which of the supported layouts ``directory`` holds, judged by its file names."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory (nor a .zip file of one)")
    for layout, (files, _, _) in LAYOUTS.items():
        if all((d / f).is_file() for f in files):
            return layout
    expected = "; ".join(" + ".join(files) for files, _, _ in LAYOUTS.values())
    raise DataError(f"{d}: no supported MovieLens layout found (expected one of: {expected})")


# Part of every cache key: a cache written by an older loader (other columns, no tidying) is never read.
CACHE_FORMAT = 2


def _fingerprint(directory: Path, files: tuple[str, ...]) -> str:
    h = hashlib.sha256(f"format {CACHE_FORMAT};".encode())
    for f in files:
        if (directory / f).exists():
            st = (directory / f).stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


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


def _write_cache(d: Path, cache_dir: Path, dataset: Dataset, layout: str) -> None:
    """Write the cache atomically (a temporary folder, then one rename): readers see a whole cache
    or none. Concurrent first loads of one folder race to the rename; a cache another process
    put there first is just as good, so losing the race is success, and no temporary is left."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from others sharing the data folder
        for key in ("ratings", "items", "users"):
            pq.write_table(getattr(dataset, key), tmp / f"{key}.parquet")
        (tmp / "meta.json").write_text(json.dumps({**dataset._meta(), "layout": layout}))
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.parent.iterdir():  # caches of earlier versions of the files
            if stale.name != cache_dir.name:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, cache_dir)
        except OSError:
            if not (cache_dir / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# An unpacked MovieLens zip is at most ML-25M's ~1.2 GB; this cap stops a zip bomb filling the disk.
MAX_UNPACKED_BYTES = 16 << 30
# GroupLens' files shrink 3-6 times in their zips; a member that claims to grow more than this is
# a zip bomb (zeros compress a thousandfold), refused before a byte of it is written. Members
# under a megabyte are too small to matter.
MAX_COMPRESSION_RATIO = 50
_RATIO_FLOOR_BYTES = 1 << 20


def _zip_layout(path: Path, members: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The members of the first layout in the zip ``path`` (its required and optional files, at
    the top or in one top folder, as GroupLens zips hold ``ml-1m/...``), judged by member names
    alone, so that nothing is unpacked from a zip that holds no data; and their sizes checked."""
    by_name = {m.filename: m for m in members if not m.is_dir()}
    folders = sorted({name.split("/", 1)[0] + "/" for name in by_name if "/" in name})

    def layout_in(folder: str) -> list[zipfile.ZipInfo]:
        for files, optional, _ in LAYOUTS.values():
            if all(folder + f in by_name for f in files):
                return [by_name[folder + f] for f in (*files, *optional) if folder + f in by_name]
        return []

    chosen = next(filter(None, map(layout_in, ("", *folders))), [])
    if not chosen:
        expected = "; ".join(" + ".join(files) for files, _, _ in LAYOUTS.values())
        raise DataError(f"{path}: no supported MovieLens layout inside (expected one of: {expected})")
    total = sum(m.file_size for m in chosen)
    if total > MAX_UNPACKED_BYTES:
        raise DataError(f"{path}: {total:,} bytes unpacked, more than the {MAX_UNPACKED_BYTES:,} allowed")
    for m in chosen:
        if m.file_size > _RATIO_FLOOR_BYTES and m.file_size > MAX_COMPRESSION_RATIO * max(1, m.compress_size):
            raise DataError(f"{path}: member {m.filename!r} would unpack {m.compress_size:,} bytes to "
                            f"{m.file_size:,}, more than {MAX_COMPRESSION_RATIO} times (a zip bomb?)")
    return chosen


def unpack_zip(path: Path) -> Path:
    """The folder holding the MovieLens layout inside the zip file ``path`` (a GroupLens download
    such as ``ml-1m.zip``, passed as it is). Only the layout's files are unpacked (the layout is
    found from member names, :func:`_zip_layout`), once, beside the zip, in
    ``.<name>.unpacked/<size and mtime>`` (or the temporary folder when that one is read-only),
    atomically like the Parquet cache, and reused while the zip is unchanged. Members with
    absolute or ``..`` paths, more than ``MAX_UNPACKED_BYTES`` or a compression ratio over
    ``MAX_COMPRESSION_RATIO`` are refused before anything is written; a failed unpacking leaves
    nothing behind."""
    st = path.stat()
    base = path.parent if os.access(path.parent, os.W_OK) else Path(tempfile.gettempdir())
    root = base / f".{path.name}.unpacked"
    dest = root / hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip file ({exc})") from None
    with zf:
        members = zf.infolist()
        unsafe = [m.filename for m in members
                  if m.filename.startswith(("/", "\\")) or ".." in Path(m.filename).parts]
        if unsafe:
            raise DataError(f"{path}: member {unsafe[0]!r} would unpack outside its folder")
        chosen = _zip_layout(path, members)
        folder = dest / Path(chosen[0].filename).parent
        if dest.is_dir():
            return folder
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            print(f"[data] unpacking {path} ({sum(m.file_size for m in chosen) / 1e6:,.0f} MB)", flush=True)
            zf.extractall(tmp, members=chosen)
            for stale in root.iterdir():  # unpacked copies of earlier versions of the zip
                if stale.name not in (tmp.name, dest.name) and not stale.name.startswith(".tmp-"):
                    shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path}: not a readable zip file ({exc})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not any(root.iterdir()):
                root.rmdir()
    return folder


def load_dataset(directory: Path, cache: bool = True) -> Dataset:
    """Load any supported layout, tidied (:func:`tidy`), through a Parquet cache keyed by the source
    files' size and mtime. ``directory`` may also be a zip file of one (:func:`unpack_zip`). The
    cache lives in ``<directory>/.parquet-cache`` (see :func:`_write_cache`); what tidying found
    is kept with it and reported again on every load."""
    d = Path(directory).resolve()
    if d.is_file() and (d.suffix.lower() == ".zip" or zipfile.is_zipfile(d)):
        d = unpack_zip(d)
    layout = detect_layout(d)
    files, optional, loader = LAYOUTS[layout]
    cache_dir = d / ".parquet-cache" / _fingerprint(d, files + optional)
    if cache and (cache_dir / "meta.json").is_file():
        meta = json.loads((cache_dir / "meta.json").read_text())
        tables = {k: pq.read_table(cache_dir / f"{k}.parquet") for k in ("ratings", "items", "users")}
        return Dataset(meta["name"], **tables, duplicates_dropped=meta["duplicates_dropped"],
                       warnings=meta["warnings"], implicit=meta.get("implicit", False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        dataset = loader(d)
    dataset.warnings += [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    dataset = tidy(dataset)
    if cache and os.access(d, os.W_OK):
        _write_cache(d, cache_dir, dataset, layout)
    return dataset


INTERACTION_SUFFIXES = (".parquet", ".csv")


def _read_columns(path: Path, types: dict[str, pa.DataType], options: dict[str, str],
                  nullable: tuple[str, ...] = ()) -> pa.Table:
    """The ``types`` columns of a Parquet or CSV file (by suffix), cast (:func:`_cast`), in that
    order; a missing column or a value of another type is a DataError naming the file (and the
    line, for CSV). A missing column's message names the columns the file has and the option that
    names it (``options``: column -> what to say), so the user knows what to change."""
    _check_file(path)
    if path.suffix.lower() == ".csv":
        with open(path, "rb") as f:
            header = f.readline().decode("utf8", errors="replace").rstrip("\r\n").lstrip("\ufeff")
        names = [h.strip().strip('"') for h in header.split(",")]
    else:
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in types if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the file has {', '.join(names)} ("
                        + "; ".join(f"{c}: {options[c]}" for c in missing) + ")")
    if path.suffix.lower() == ".csv":
        return read_table(path, types, nullable=nullable).select(list(types))
    return _cast(str(path), pq.read_table(path, columns=list(types)), types, nullable)


def load_interactions(path: Path, columns: ColumnSettings, items_file: str = "") -> Dataset:
    """A user's own interactions file (Parquet or CSV) whose columns ``columns`` names (user, item;
    rating optional: without one the data is implicit-only, see :class:`Dataset`; timestamp
    optional: without one every rating has time 0), and optionally an items file with titles and
    genres. Checked like the MovieLens layouts (ids, star range, duplicates)."""
    path = Path(path)
    types = {columns.user: pa.int64(), columns.item: pa.int64()}
    if columns.rating:
        types[columns.rating] = pa.float32()
    if columns.timestamp:
        types[columns.timestamp] = pa.int64()
    table = _read_columns(path, types, {
        columns.user: "name the user id column with --user-column",
        columns.item: "name the item id column with --item-column",
        columns.rating: 'name the rating column with --rating-column, or --rating-column "" for implicit-only data',
        columns.timestamp: 'name the time column with --timestamp-column, or --timestamp-column "" for a file '
                           "without times"})
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    if not columns.rating:  # "interacted" (the column _validate_ratings expects third)
        table = table.add_column(2, "rating", pa.array(np.ones(table.num_rows, np.float32)))
    if not columns.timestamp:
        table = table.append_column("timestamp", pa.array(np.zeros(table.num_rows, np.int64)))
    ratings = _validate_ratings(path, table, header=path.suffix.lower() == ".csv")
    items = ITEMS_SCHEMA.empty_table()
    if items_file:
        source = Path(items_file).expanduser()
        wanted = {columns.item: pa.int64(), columns.title: pa.string()}
        if columns.genres:
            csv_file = source.suffix.lower() == ".csv"
            wanted[columns.genres] = pa.string() if csv_file else pa.list_(pa.string())
        raw = _read_columns(source, wanted, {
            columns.item: "name the item id column with --item-column",
            columns.title: "name the title column with --title-column",
            columns.genres: 'name the genres column with --genres-column, or --genres-column "" for none'},
            nullable=(columns.title, columns.genres))
        check_ids(source, raw, (columns.item,))
        titles, years = split_title_year([t or "" for t in raw[columns.title].to_pylist()])
        if not columns.genres:
            genres = [[] for _ in titles]
        elif pa.types.is_list(raw[columns.genres].type):
            genres = [[g for g in (gs or []) if g] for gs in raw[columns.genres].to_pylist()]
        else:
            genres = _clean_genres(raw[columns.genres].to_pylist(), columns.genres_separator)
        items = _items_table(raw[columns.item], titles, years, genres)
    return tidy(Dataset(path.stem, ratings, items, USERS_SCHEMA.empty_table(), implicit=not columns.rating))


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


def _cast(label: str, table: pa.Table, types: dict[str, pa.DataType], nullable: tuple[str, ...] = ()) -> pa.Table:
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
        ratings = _validate_ratings(f"{shown} (ratings query)", _cast(f"{shown} (ratings query)", raw, dict(zip(
            RATINGS_SCHEMA.names, RATINGS_SCHEMA.types))))
        items = ITEMS_SCHEMA.empty_table()
        if movies_query:
            label = f"{shown} (movies query)"
            movies = _query(conn, label, movies_query, ("item_id", "title", "genres"))
            listed = pa.types.is_list(movies["genres"].type)
            movies = _cast(label, movies.set_column(2, "genres", movies["genres"].fill_null([] if listed else "")),
                           {"item_id": pa.int64(), "title": pa.string(),
                            "genres": pa.list_(pa.string()) if listed else pa.string()})
            check_ids(label, movies, ("item_id",))
            titles, years = split_title_year(movies["title"].to_pylist())
            genres = movies["genres"].to_pylist() if listed else _clean_genres(movies["genres"].to_pylist(), "|")
            items = _items_table(movies["item_id"], titles, years, genres)
        users = USERS_SCHEMA.empty_table()
        if users_query:
            label = f"{shown} (users query)"
            users = _cast(label, _query(conn, label, users_query, tuple(USERS_SCHEMA.names)),
                          dict(zip(USERS_SCHEMA.names, USERS_SCHEMA.types)))
    return tidy(Dataset(where.path.strip("/") or "postgresql", ratings, items, users))


def with_feedback(dataset: Dataset, feedback: pa.Table, origin: str, leave_out: frozenset[str] = frozenset()
                  ) -> Dataset:
    """``dataset`` with the ratings users sent (``movierec.feedback``, from ``origin``) as its
    ``feedback``, apart from its ratings: they join training only (``movierec.split.join_training``).
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


def load_remote_dataset(url: str) -> Dataset:
    """A MovieLens folder in object storage (``s3://bucket/prefix``): the files of the known
    layouts directly under it (not the rest of a download: ML-20M's genome scores alone are
    300 MB), downloaded with Metaflow's S3 client (the datastore's credentials and endpoint, so a
    step on Kubernetes or AWS Batch reads data with what the run's artifacts use) into a temporary
    folder and loaded as a local one, without a Parquet cache (the folder is gone after the load)."""
    from metaflow import S3

    known = {name for files, optional, _ in LAYOUTS.values() for name in (*files, *optional)}
    with tempfile.TemporaryDirectory(prefix="movierec-data-") as tmp, \
            S3(s3root=url.rstrip("/") + "/", tmproot=tmp) as s3:
        keys = [o.key for o in s3.list_paths() if o.exists and o.key.strip("/") in known]
        if not keys:
            expected = "; ".join(" + ".join(files) for files, _, _ in LAYOUTS.values())
            raise DataError(f"{url}: no MovieLens files there (expected one of: {expected})")
        folder = Path(tmp) / "data"
        folder.mkdir()
        print(f"[data] downloading {len(keys)} files from {url}", flush=True)
        for obj in s3.get_many(keys):
            shutil.move(obj.path, folder / Path(obj.key).name)
        return load_dataset(folder, cache=False)


# --------------------------------------------------------------------------- fetching ML-100K


def extract_ml100k(wheel: Path, dest: Path, checksums: dict[str, str] = ML100K_SHA256) -> Path:
    """Take the ML-100K files out of a recbole wheel into ``dest``, verifying each one's sha256.

    Files are checked in a temporary folder and moved into place only when all match, so a
    corrupt or tampered wheel leaves ``dest`` untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            for name, expected in checksums.items():
                member = ML100K_MEMBER_DIR + name
                try:
                    data = zf.read(member)
                except KeyError:
                    raise DataError(f"{wheel}: member {member} missing") from None
                actual = sha256(data)
                if actual != expected:
                    raise DataError(f"{wheel}: {member} sha256 {actual}, expected {expected}")
                (Path(tmp) / name).write_bytes(data)
        dest.mkdir(parents=True, exist_ok=True)
        for name in checksums:
            os.replace(Path(tmp) / name, dest / name)
    return dest


def fetch_ml100k(
    dest: Path = DEFAULT_DATA_DIR,
    index_url: str | None = None,
    wheel_sha256: str | None = RECBOLE_WHEEL_SHA256,
    checksums: dict[str, str] = ML100K_SHA256,
) -> Path:
    """Make sure the real MovieLens 100K lies in ``dest``; download it from PyPI when it does not.

    The data set is the copy GroupLens' files ship inside the ``recbole==1.2.1`` wheel. We
    ``pip download --no-deps`` that wheel (never install it: it pins an old Ray), check its hash,
    and extract only the three ML-100K files. ``index_url`` points pip at another index
    (tests use a local one).
    """
    dest = Path(dest)
    if all((dest / n).is_file() and sha256(dest / n) == s for n, s in checksums.items()):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
        if index_url:
            cmd += ["--index-url", index_url]
        print(f"movierec: downloading {RECBOLE_REQUIREMENT} (carries MovieLens 100K) ...", file=sys.stderr)
        proc = subprocess.run(cmd + [RECBOLE_REQUIREMENT], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(f"pip download {RECBOLE_REQUIREMENT} failed: {proc.stderr.strip()[-500:]}")
        if wheel_sha256 and sha256(wheels[0]) != wheel_sha256:
            raise DataError(f"{wheels[0].name}: sha256 {sha256(wheels[0])}, expected {wheel_sha256}")
        return extract_ml100k(wheels[0], dest, checksums)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m movierec.data",
        description="Fetch MovieLens 100K from PyPI, or check and cache a data directory as Parquet.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download ML-100K (from the recbole wheel) into a directory")
    f.add_argument("--dest", type=Path, default=DEFAULT_DATA_DIR)
    f.add_argument("--index-url", default=None, help="package index to download from (default: pip's)")
    c = sub.add_parser("check", help="load a data directory, write its Parquet cache, print statistics")
    c.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"ML-100K ready in {fetch_ml100k(args.dest, args.index_url)}")
        else:
            dataset = load_dataset(args.data_dir)
            for note in dataset.warnings:
                print(f"warning: {note}", file=sys.stderr)
            print(json.dumps(dataset.stats(), indent=2))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

