"""Reading delimited files (``movierec.data.delimited``): a bad file is named with its line and
problem, whatever the layout; text that is not UTF-8 is read as latin-1 and said.

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

from pathlib import Path

import pytest
from data_samples import HEADER, MOVIES_CSV, RATINGS_CSV, RATINGS_DAT, RB_USER, _write

from movierec import data
from movierec.data import DataError


@pytest.mark.parametrize(
    "ratings, fragments",
    [
        (None, ["file not found"]),
        ("", ["file is empty"]),
        (HEADER, ["no data rows"]),
        ("userId,movieId,timestamp\n1,1,10\n", ["line 1", "missing column(s) rating"]),
        (HEADER + "1,1,4.0,10\n1,2,abc,11\n", ["line 3", "column 'rating'", "'abc'"]),
        (HEADER + "1,1,4.0,10\n1,2,3.0,11\n1,3,12\n", ["line 4", "expected 4 fields", "got 3"]),
        (HEADER + "1,1,4.0,10\n1,2,3.0,11\n1,3,2.0,12,99\n", ["line 4", "expected 4 fields", "got 5"]),
        (HEADER + "1,,4.0,10\n", ["line 2", "column 'movieId' is empty"]),
        (HEADER + "1,1,4.0,10\n1,2,7,11\n", ["line 3", "rating 7 out of range"]),
        (HEADER + "1,1,0,10\n", ["line 2", "rating", "out of range"]),
    ],
    ids=["missing", "empty", "header-only", "missing-column", "non-numeric", "too-few-fields",
         "too-many-fields", "empty-value", "rating-7", "rating-0"],
)
def test_bad_ratings_csv_names_file_line_and_problem(tmp_path: Path, ratings, fragments):
    d = _write(tmp_path / "bad", {"movies.csv": MOVIES_CSV})
    if ratings is not None:
        (d / "ratings.csv").write_text(ratings)
    with pytest.raises(DataError) as info:
        data.load_grouplens_csv(d)
    message = str(info.value)
    assert str(d / "ratings.csv") in message
    for fragment in fragments:
        assert fragment in message


def test_bad_movies_csv_names_that_file(tmp_path: Path):
    movies = "movieId,title,genres\n1,Heat (1995)\nx,A,B\n"
    d = _write(tmp_path / "bad", {"ratings.csv": RATINGS_CSV, "movies.csv": movies})
    with pytest.raises(DataError) as info:
        data.load_grouplens_csv(d)
    assert str(d / "movies.csv") + ", line 2: expected 3 fields (movieId, title, genres), got 2" in str(info.value)


def test_bad_ml1m_lines_are_counted_without_a_header(ml1m_dir: Path):
    (ml1m_dir / "ratings.dat").write_text("1::1193::5::978300760\n1::661::x::978302109\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 2: column 'rating' expected float, got 'x'"):
        data.load_ml1m(ml1m_dir)
    (ml1m_dir / "ratings.dat").write_text("1::1193::6::978300760\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 1: rating .*6.* out of range"):
        data.load_ml1m(ml1m_dir)
    (ml1m_dir / "ratings.dat").write_text(RATINGS_DAT)
    (ml1m_dir / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16\n")
    with pytest.raises(DataError, match=r"users\.dat, line 2: expected 5 fields .*got 4"):
        data.load_ml1m(ml1m_dir)


def test_bad_recbole_value_names_file_and_line(recbole_dir: Path):
    (recbole_dir / "ml-100k.user").write_text(RB_USER.replace("\t39\t", "\tthirty\t"))
    with pytest.raises(DataError) as info:
        data.load_recbole_ml100k(recbole_dir)
    assert str(recbole_dir / "ml-100k.user") + ", line 3: column 'age' expected int32, got 'thirty'" in str(info.value)


def test_line_numbers_after_a_blank_line(tmp_path: Path):
    d = _write(tmp_path / "blank", {"ratings.csv": HEADER + "1,1,4.0,10\n\n1,11,7,20\n", "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError, match="line 4: rating"):
        data.load_grouplens_csv(d)


def test_int64_overflow_names_the_line(tmp_path: Path):
    d = _write(tmp_path / "big", {"ratings.csv": HEADER + "1,1,4.0,10\n1,99999999999999999999,3.5,20\n",
                                  "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError, match="line 3"):
        data.load_grouplens_csv(d)


def test_a_latin1_movies_csv_loads_with_a_warning_naming_the_line(tmp_path: Path):
    """It said only 'could not be parsed'."""
    d = _write(tmp_path / "latin", {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV.replace(
        "Untitled Short", "Café Short").encode("latin-1")})
    ds = data.load_dataset(d)
    assert "Café Short" in ds.items["title"].to_pylist()
    assert ds.warnings == [f"{d / 'movies.csv'}, line 4: not valid utf8 (byte 0xe9); read as latin-1"]


def test_a_field_over_the_csv_modules_limit_is_named_by_line(tmp_path: Path):
    """The slow path re-reads a refused file with Python's csv module, whose 128 KiB field limit
    stopped it with a raw `_csv.Error`."""
    d = _write(tmp_path / "long", {"ratings.csv": HEADER + '1,2,4,10\n1,3,"' + "x" * 200_000 + '",11\n',
                                   "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError, match=r"ratings.csv, line 3: a field longer than 131,072 characters \(a quote "):
        data.load_dataset(d, cache=False)
