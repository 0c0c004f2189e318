"""A user's own interactions file (``movierec.data.interactions``): columns named by the settings,
Parquet or CSV, implicit-only data, and what the start step says of a bad one.

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

import re
from pathlib import Path

import pyarrow as pa
import pytest
from data_samples import COLUMNS, _interactions, _write

from movierec import data
from movierec.core.settings import ColumnSettings
from movierec.data import DataError


def test_an_interactions_file_with_its_own_column_names_and_an_items_file(tmp_path: Path):
    ratings, items = _interactions(tmp_path)
    ds = data.load_interactions(ratings, COLUMNS, str(items))
    assert ds.ratings.schema == data.RATINGS_SCHEMA
    # user 12 rated sku 9 twice: the latest (1.0 at ts 104) is kept, and said
    assert ds.ratings.to_pydict() == {"user_id": [10, 10, 11, 12], "item_id": [7, 8, 7, 9],
                                      "rating": [4.0, 2.5, 5.0, 1.0], "timestamp": [100, 101, 102, 104]}
    assert ds.duplicates_dropped == 1
    assert ds.items.to_pylist() == [{"item_id": 7, "title": "Heat", "year": 1995, "genres": ["Crime", "Drama"]},
                                    {"item_id": 8, "title": "Casino", "year": None, "genres": []},
                                    {"item_id": 9, "title": "", "year": None, "genres": []}]


def test_a_csv_interactions_file_without_timestamps_and_text_genres(tmp_path: Path):
    _write(tmp_path, {"plays.csv": "customer,sku,stars\n1,5,4\n2,5,3.5\n",
                      "catalogue.csv": "sku,name,tags\n5,Alien (1979),Horror;Sci-Fi\n6,Blank,\n"})
    columns = ColumnSettings(user="customer", item="sku", rating="stars", timestamp="", title="name",
                             genres="tags", genres_separator=";")
    ds = data.load_interactions(tmp_path / "plays.csv", columns, str(tmp_path / "catalogue.csv"))
    assert ds.ratings["timestamp"].to_pylist() == [0, 0]
    assert ds.items["genres"].to_pylist() == [["Horror", "Sci-Fi"], []]


def test_an_interactions_file_that_does_not_match_its_mapping_says_how(tmp_path: Path):
    ratings, _ = _interactions(tmp_path)
    with pytest.raises(data.DataError, match=r"ratings.parquet: missing column\(s\) user; the file has customer, "
                                             "sku, stars, ts, note"):
        data.load_interactions(ratings, ColumnSettings(user="user", item="sku", rating="stars", timestamp="ts"))
    with pytest.raises(data.DataError, match="ratings.parquet: column 'note' is string, expected int64"):
        data.load_interactions(ratings, ColumnSettings(user="note", item="sku", rating="stars", timestamp="ts"))
    _write(tmp_path, {"bad.csv": "customer,sku,stars,ts\n1,5,4,100\n2,5,lots,101\n"})
    with pytest.raises(data.DataError, match=r"bad.csv, line 3: column 'stars'"):
        data.load_interactions(tmp_path / "bad.csv", COLUMNS)
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"customer": [1, 2], "sku": [5, 5], "stars": [4.0, 9.0], "ts": [1, 2]}),
                   tmp_path / "nine.parquet")
    with pytest.raises(data.DataError, match=r"nine.parquet, row 2: stars 9 out of range"):  # rows, not lines
        data.load_interactions(tmp_path / "nine.parquet", COLUMNS)
    _write(tmp_path, {"clicks.csv": "customer,sku\n1,5\n2,x5\n"})
    with pytest.raises(data.DataError, match=r"clicks.csv, line 3: column 'sku'"):
        data.load_interactions(tmp_path / "clicks.csv", ColumnSettings(user="customer", item="sku", rating="",
                                                                        timestamp=""))


def test_a_ratings_file_without_a_timestamp_column_names_the_option_that_reads_it_without_times(tmp_path: Path):
    """README says such files work, but the loader stopped at "missing column(s) timestamp" and
    did not say that --timestamp-column "" reads them."""
    _write(tmp_path, {"plays.csv": "user,item,rating\n1,5,4\n2,5,3.5\n"})
    for name in ("plays.csv", "plays.parquet"):
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"user": [1, 2], "item": [5, 5], "rating": [4.0, 3.5]}), tmp_path / name)
        with pytest.raises(data.DataError, match=(
                rf"{name}: missing column\(s\) timestamp; the file has user, item, rating \(timestamp: name the time "
                r'column with --timestamp-column, or --timestamp-column "" for a file without times\)')):
            data.load_interactions(tmp_path / name, ColumnSettings())
        assert data.load_interactions(tmp_path / name, ColumnSettings(timestamp="")).ratings.num_rows == 2


def test_parquet_times_are_seconds_whatever_their_unit_and_true_false_ids_are_refused(tmp_path: Path):
    """A timestamp[ns] column loaded as nanoseconds (the PostgreSQL path took seconds); a bool id
    column was cast to ids 0 and 1 without a word."""
    import datetime

    import pyarrow.parquet as pq

    when = [datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 2, 0, 0, 1)]
    for typ in (pa.timestamp("ns"), pa.timestamp("ms", tz="UTC"), pa.date32()):
        values = [w.date() for w in when] if typ == pa.date32() else when
        pq.write_table(pa.table({"customer": [1, 2], "sku": [5, 5], "stars": [4.0, 3.0],
                                 "ts": pa.array(values, typ)}), tmp_path / "timed.parquet")
        times = data.load_interactions(tmp_path / "timed.parquet", COLUMNS).ratings["timestamp"].to_pylist()
        assert times == ([1577836800, 1577923200] if typ == pa.date32() else [1577836800, 1577923201]), typ
    pq.write_table(pa.table({"customer": [True, False], "sku": [5, 5], "stars": [4.0, 3.0], "ts": [1, 2]}),
                   tmp_path / "flags.parquet")
    with pytest.raises(DataError, match=r"flags.parquet: column 'customer' is bool \(true/false\), expected int64"):
        data.load_interactions(tmp_path / "flags.parquet", COLUMNS)


def test_bad_data_stops_the_start_step_with_its_one_useful_line(tmp_path: Path, metaflow_root: str):
    """It printed Metaflow's "Internal error" and a 40-line traceback before the line naming the file."""
    from conftest import FLOW
    from metaflow import Runner

    from movierec.pipeline import InputError

    _write(tmp_path, {"bad.csv": "user,item,rating,timestamp\n1,5,4,10\n2,x,3,11\n"})
    with Runner(FLOW, show_output=False, pylint=False, cwd=metaflow_root).run(data_dir=str(tmp_path / "bad.csv"),
                                                                              protocol="tfrs") as running:
        status, out = running.status, running.stdout + running.stderr
    assert status == "failed"
    assert f"Bad input data:\n{tmp_path / 'bad.csv'}, line 3: column 'item' expected int64, got 'x'" in re.sub(
        r"(?m)^.*\] ", "", out), out
    assert "Internal error" not in out and "Traceback" not in out, out
    assert issubclass(InputError, DataError)  # still one for callers outside a flow


def test_an_interactions_file_without_ratings_is_implicit_only_data(tmp_path: Path):
    """No rating column: every interaction is 1.0, "interacted"; the data says it is implicit all the
    way to the flow's artifact (to_bytes) and its statistics, which then have no mean rating."""
    ratings, _ = _interactions(tmp_path)
    ds = data.load_interactions(ratings, ColumnSettings(user="customer", item="sku", rating="", timestamp="ts"))
    assert ds.implicit and ds.ratings.schema == data.RATINGS_SCHEMA
    assert ds.ratings.to_pydict() == {"user_id": [10, 10, 11, 12], "item_id": [7, 8, 7, 9],
                                      "rating": [1.0] * 4, "timestamp": [100, 101, 102, 104]}
    stats = ds.stats()
    assert stats["implicit"] is True and "mean_rating" not in stats
    assert data.Dataset.from_bytes(ds.to_bytes()).implicit
    assert data.Dataset.from_bytes(ds.head(2).to_bytes()).implicit
    _write(tmp_path, {"clicks.csv": "customer,sku\n1,5\n2,5\n1,5\n"})
    clicks = data.load_interactions(tmp_path / "clicks.csv", ColumnSettings(user="customer", item="sku", rating="",
                                                                             timestamp=""))
    assert clicks.implicit and clicks.ratings.num_rows == 2 and clicks.duplicates_dropped == 1
    assert not data.load_interactions(ratings, COLUMNS).implicit


def test_the_start_step_loads_an_interactions_file_as_the_settings_map_it(tmp_path: Path):
    from dataclasses import replace

    from movierec import pipeline
    from movierec.core.settings import DataSettings, Settings

    ratings, items = _interactions(tmp_path)
    settings = Settings(data=DataSettings(dir=str(ratings), items_file=str(items), columns=COLUMNS))
    assert pipeline.load_data(settings).stats()["ratings"] == 4
    no_time = replace(settings, protocol="temporal",
                      data=replace(settings.data, columns=replace(COLUMNS, timestamp="")))
    with pytest.raises(ValueError, match="the temporal protocol splits by time: give --timestamp-column"):
        pipeline.load_data(no_time)
    with pytest.raises(ValueError, match="--items-file goes with an interactions file"):
        pipeline.load_data(Settings(data=DataSettings(items_file=str(items))))
    with pytest.raises(ValueError, match=r'--rating-column "" \(implicit-only data\) goes with an interactions file'):
        pipeline.load_data(Settings(data=DataSettings(dir=str(tmp_path), columns=ColumnSettings(rating=""))))
