"""A user's own interactions file (Parquet or CSV) whose columns ``ColumnSettings`` names, with
an optional items file, checked like the MovieLens layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from movierec.core.settings import ColumnSettings
from movierec.data.core import (
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    DataError,
    Dataset,
    cast_columns,
    check_file,
    check_ids,
    clean_genres,
    items_table,
    split_title_year,
    tidy,
    validate_ratings,
)
from movierec.data.delimited import read_table

INTERACTION_SUFFIXES = (".parquet", ".csv")


def _read_columns(path: Path, types: dict[str, pa.DataType], options: dict[str, str],
                  nullable: tuple[str, ...] = ()) -> pa.Table:
    """The ``types`` columns of a Parquet or CSV file (by suffix), cast (:func:`cast_columns`), in that
    order; a missing column or a value of another type is a DataError naming the file (and the
    line, for CSV). A missing column's message names the columns the file has and the option that
    names it (``options``: column -> what to say), so the user knows what to change."""
    check_file(path)
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
    return cast_columns(str(path), pq.read_table(path, columns=list(types)), types, nullable)


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
    if not columns.rating:  # "interacted" (the column validate_ratings expects third)
        table = table.add_column(2, "rating", pa.array(np.ones(table.num_rows, np.float32)))
    if not columns.timestamp:
        table = table.append_column("timestamp", pa.array(np.zeros(table.num_rows, np.int64)))
    ratings = validate_ratings(path, table, header=path.suffix.lower() == ".csv")
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
            genres = clean_genres(raw[columns.genres].to_pylist(), columns.genres_separator)
        items = items_table(raw[columns.item], titles, years, genres)
    return tidy(Dataset(path.stem, ratings, items, USERS_SCHEMA.empty_table(), implicit=not columns.rating))
