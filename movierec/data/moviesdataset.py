"""The Movies Dataset (Kaggle): GroupLens ratings joined to TMDB's metadata through the links
files, the metadata's known dirty rows dropped and counted."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from movierec.data.core import (
    USERS_SCHEMA,
    DataError,
    Dataset,
    DataWarning,
    check_file,
    check_ids,
    items_table,
    validate_ratings,
)
from movierec.data.delimited import read_table


def _movies_metadata(path: Path) -> tuple[dict[int, tuple[str, int | None, list[str]]], list[str]]:
    """The Movies Dataset's ``movies_metadata.csv`` as {TMDB id: (title, year, genres)}, and what
    was dropped and why. The file is known to be dirty: overviews with newlines inside quotes, a
    few rows whose columns are shifted (a date where the id belongs), lines with too few fields,
    repeated ids, genres written as Python lists of dicts. Only the columns used are parsed."""
    check_file(path)
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
    items = items_table(pa.array(ids, pa.int64()), titles, years, genres)
    return Dataset(d.name, validate_ratings(ratings_file, ratings), items, USERS_SCHEMA.empty_table())
