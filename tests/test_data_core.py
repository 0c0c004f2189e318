"""The dataset itself (``movierec.data.core``): its artifact form, slices and statistics, the checks
every reader shares (ids, stars), tidying (duplicates, movies missing from the movies file) and
the ratings users send (``with_feedback``).

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from data_samples import COLUMNS, HEADER, MOVIES_CSV, RATINGS_CSV, _assert_same, _interactions, _write

from movierec import data
from movierec.core.settings import ColumnSettings
from movierec.data import DataError


def test_split_title_year():
    assert data.split_title_year(["Toy Story (1995)", "Heat", "Se7en  (1995) ", "1984 (1984)"]) == (
        ["Toy Story", "Heat", "Se7en", "1984"],
        [1995, None, 1995, 1984],
    )


def test_to_bytes_from_bytes_round_trip(ml1m_dir: Path):
    ds = data.load_ml1m(ml1m_dir)
    blobs = ds.to_bytes()
    assert set(blobs) == {"meta", "ratings", "items", "users", "feedback"}
    assert all(isinstance(b, bytes) for b in blobs.values())
    back = data.Dataset.from_bytes(blobs)
    _assert_same(back, ds)
    assert (back.name, back.duplicates_dropped, back.warnings) == (ds.name, ds.duplicates_dropped, ds.warnings)
    assert back.items.column("title").to_pylist()[2] == "Café"


def test_head_keeps_earliest_ratings():
    ratings = pa.table(
        {
            "user_id": [5, 1, 3, 2, 4],
            "item_id": [10, 11, 12, 13, 14],
            "rating": pa.array([1, 2, 3, 4, 5], pa.float32()),
            "timestamp": [500, 100, 300, 100, 200],
        },
        schema=data.RATINGS_SCHEMA,
    )
    ds = data.Dataset("toy", ratings, data.ITEMS_SCHEMA.empty_table(), data.USERS_SCHEMA.empty_table())
    top = ds.head(3)
    assert top.name == "toy[:3]"
    # timestamp 100 twice (user 1 before user 2 on the tie), then 200.
    assert top.ratings.column("item_id").to_pylist() == [11, 13, 14]
    assert top.ratings.column("timestamp").to_pylist() == [100, 100, 200]
    assert top.items is ds.items and top.users is ds.users
    assert ds.head(0) is ds and ds.head(5) is ds and ds.head(99) is ds
    assert ds.head(4).ratings.num_rows == 4


def test_stats(csv_dir: Path):
    s = data.load_grouplens_csv(csv_dir).stats()
    assert s["ratings"] == 4 and s["users"] == 2 and s["items"] == 3
    assert s["density"] == pytest.approx(4 / 6)
    assert s["mean_rating"] == pytest.approx(13.0 / 4)
    assert (s["first_timestamp"], s["last_timestamp"]) == (964981247, 964983815)
    assert (s["items_with_metadata"], s["users_with_features"]) == (3, 0)


def test_doubled_ml100k_keeps_each_pairs_latest_rating_and_no_pair_crosses_the_split(ml100k_dir, tmp_path):
    """ML-100K with every row written twice loaded silently, and 80% of test pairs were also in
    train. The second copies here are one second later with another rating for half the rows and
    identical otherwise: the later (or, on a tie, the second) row must win."""
    from movierec import pipeline
    from movierec.data.features import encode

    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    copies = []
    for n, row in enumerate(rows):
        user, item, rating, ts = row.split("\t")
        copies.append(f"{user}\t{item}\t{6 - float(rating)}\t{int(float(ts)) + n % 2}")
    d = tmp_path / "doubled"
    d.mkdir()
    (d / "ml-100k.inter").write_text("\n".join([header, *rows, *copies]) + "\n")
    for name in ("ml-100k.item", "ml-100k.user"):
        (d / name).write_bytes((ml100k_dir / name).read_bytes())
    ds = data.load_dataset(d)
    assert ds.ratings.num_rows == 100_000 and ds.duplicates_dropped == 100_000
    assert ds.stats()["duplicate_ratings_dropped"] == 100_000
    assert "100,000 duplicate (user, movie) ratings dropped" in ds.warnings[0]
    kept = {(r["user_id"], r["item_id"]): r["rating"] for r in ds.ratings.to_pylist()}
    original = [row.split("\t") for row in rows[:6]]
    assert [kept[(int(u), int(i))] for u, i, _, _ in original] == [6 - float(r) for _, _, r, _ in original]
    enc = encode(ds)
    for protocol in ("tfrs", "msr", "temporal"):
        split = pipeline.split_for(enc, protocol, 42)
        pairs = enc.user_idx.astype(np.int64) * enc.n_items + enc.item_idx
        assert not np.intersect1d(pairs[split.train], pairs[split.test]).size, protocol
    assert data.load_dataset(d).warnings == ds.warnings  # from the cache, reported again


@pytest.mark.parametrize("row, fragments", [
    ("1,2,nan,11", ["line 3", "rating is not a number (nan)"]),  # said "column is empty"
    ("1,2,NULL,11", ["line 3", "column 'rating' expected float, got 'NULL'"]),
    ("-1,2,3.0,11", ["line 3", "userId -1 out of range", "0 to 4611686018427387904"]),  # the file's names
    ("1,4611686018427387905,3.0,11", ["line 3", "movieId 4611686018427387905 out of range"]),
    ("1,2,inf,11", ["line 3", "rating inf out of range"]),  # not np.float32(inf)
])
def test_values_the_api_would_refuse_are_refused_when_loading(tmp_path: Path, row, fragments):
    d = _write(tmp_path / "bad", {"ratings.csv": HEADER + "1,1,4.0,10\n" + row + "\n", "movies.csv": MOVIES_CSV})
    with pytest.raises(DataError) as info:
        data.load_dataset(d)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_movies_missing_or_repeated_in_the_movies_file_are_counted(tmp_path: Path):
    movies = MOVIES_CSV + "1,Toy Story again (1995),Comedy\n"
    ratings = RATINGS_CSV + "3,500,4.0,964990000\n3,501,4.0,964990001\n"
    ds = data.load_dataset(_write(tmp_path / "odd", {"ratings.csv": ratings, "movies.csv": movies}))
    assert "1 movie rows repeat an earlier movie id: the first of each is kept" in ds.warnings
    assert "2 of 5 rated movies have no row in the movies file: they are recommended without title, genres or " \
        "year" in ds.warnings
    assert ds.items.num_rows == 3 and "Toy Story" in ds.items["title"].to_pylist()


def test_ratings_users_send_join_implicit_only_data_as_interactions(tmp_path: Path):
    ratings, _ = _interactions(tmp_path)
    ds = data.load_interactions(ratings, ColumnSettings(user="customer", item="sku", rating="", timestamp="ts"))
    sent = pa.table({"user_id": [99, 10, 98], "item_id": [7, 9, 8], "rating": [2.5, 5.0, 3.0],
                     "timestamp": [200, 201, 202]})
    merged = data.with_feedback(ds, sent, "store.sqlite3")
    assert merged.implicit and merged.ratings == ds.ratings  # kept apart, for training only
    assert merged.feedback.to_pydict() == {"user_id": [10, 98], "item_id": [9, 8], "rating": [1.0, 1.0],
                                           "timestamp": [201, 202]}  # the two above 2.5 stars
    assert ("store.sqlite3: 2 ratings users sent added, for training only (the split leaves out those of its test "
            "pairs) (as interactions: the data has no ratings; 1 of 2.5 stars or less left out)") in merged.warnings


def test_ratings_users_send_are_taken_by_column_name_each_pairs_latest_and_unknown_movies_dropped(tmp_path: Path):
    """One rating of a movie missing from the next data stopped every retrain ("1 ratings of movies
    not in the data"); the store's table may carry more columns than the four ratings ones."""
    ratings, items = _interactions(tmp_path)
    ds = data.load_interactions(ratings, COLUMNS, str(items))
    sent = pa.table({"written_by": ["api", "api", "api", "web"], "timestamp": [300, 200, 250, 260],
                     "item_id": [7, 7, 4242, 8], "user_id": [99, 99, 99, 10], "rating": [2.0, 5.0, 4.0, 3.5]})
    merged = data.with_feedback(ds, sent, "store.sqlite3")
    assert merged.feedback.schema == data.RATINGS_SCHEMA
    assert merged.feedback.to_pydict() == {"user_id": [99, 10], "item_id": [7, 8], "rating": [2.0, 3.5],
                                           "timestamp": [300, 260]}
    assert merged.warnings[-1] == (
        "store.sqlite3: 2 ratings users sent added, for training only (the split leaves out those of its test pairs) "
        "(1 earlier ratings of a movie the same user rated again left out; 1 ratings of movies not in the data "
        "dropped (first: movie 4242))")
    back = data.Dataset.from_bytes(merged.to_bytes())
    assert back.feedback == merged.feedback and back.stats()["feedback_ratings"] == 2
    with pytest.raises(data.DataError, match="store.sqlite3: the ratings store has no column.s. rating, expected "
                                             "user_id, item_id, rating, timestamp"):
        data.with_feedback(ds, sent.drop_columns(["rating"]), "store.sqlite3")
