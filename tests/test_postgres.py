"""PostgreSQL as a data source, against a real server: Debian's ``postgresql`` package started by
the fixture (``initdb`` + ``pg_ctl``) in a temporary folder on a loopback port, as `.ci/run`
installs it."""

import os

import pyarrow as pa
import pytest
from conftest import free_port

from movierec import data, flowconfig, pgserver, pipeline
from movierec.settings import DataSettings, Settings

PASSWORD = "movierec-tests"


@pytest.fixture(scope="module")
def postgres():
    """A running server (``movierec.pgserver``): its URL, the password in PGPASSWORD."""
    if pgserver.server_binaries() is None:
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql; .ci/run does)")
    with pgserver.local_postgres(free_port(), PASSWORD) as url:
        os.environ["PGPASSWORD"] = PASSWORD
        try:
            yield url
        finally:
            os.environ.pop("PGPASSWORD", None)


def _load_tables(url: str, tables: dict[str, pa.Table]) -> None:
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(url) as conn, conn.cursor() as cur:
        for name, table in tables.items():
            cur.execute(f"DROP TABLE IF EXISTS {name}")
            cur.adbc_ingest(name, table, mode="create")
        conn.commit()


def test_ml100k_from_postgresql_is_the_same_dataset_as_from_its_files(postgres, ml100k_dir):
    files = data.load_dataset(ml100k_dir, cache=False)
    items = files.items.select(["item_id", "title", "genres"])
    # titles with their year, as a movies table holds them (the loader splits it off again)
    items = items.set_column(1, "title", pa.array([f"{t} ({y})" if y else t for t, y in zip(
        files.items["title"].to_pylist(), files.items["year"].to_pylist())]))
    _load_tables(postgres, {"ratings": files.ratings, "movies": items, "people": files.users})
    loaded = data.load_postgres(postgres, "SELECT user_id, item_id, rating, timestamp FROM ratings",
                                "SELECT item_id, title, genres FROM movies",
                                "SELECT user_id, age, gender, occupation FROM people")
    for key in ("ratings", "items", "users"):
        assert getattr(loaded, key).equals(getattr(files, key)), key
    # the start step: the URL (no password) is a setting, stored with the run
    settings = Settings(data=DataSettings(source=postgres, users_query="SELECT * FROM people"))
    assert pipeline.load_data(settings).stats()["ratings"] == 100_000


def test_timestamps_text_genres_and_what_is_wrong_named_by_query_and_row(postgres):
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(postgres) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS r2")
        cur.execute("DROP TABLE IF EXISTS m2")
        cur.execute("CREATE TABLE r2 (u bigint, m int, stars real, at timestamptz)")
        cur.execute("INSERT INTO r2 VALUES (1, 10, 4.5, '1970-01-01 00:01:40+00'), (2, 10, 9, '1970-01-02+00')")
        cur.execute("CREATE TABLE m2 (id int, name text, tags text)")
        cur.execute("INSERT INTO m2 VALUES (10, 'Heat (1995)', 'Crime|Drama'), (11, 'Blank', NULL)")
        conn.commit()
    ok = data.load_postgres(postgres, "SELECT * FROM r2 WHERE stars <= 5", "SELECT * FROM m2")
    assert ok.ratings.to_pylist() == [{"user_id": 1, "item_id": 10, "rating": 4.5, "timestamp": 100}]
    assert ok.items.to_pylist()[0] == {"item_id": 10, "title": "Heat", "year": 1995, "genres": ["Crime", "Drama"]}
    with pytest.raises(data.DataError, match=r"\(ratings query\), row 2: rating 9 out of range"):
        data.load_postgres(postgres, "SELECT * FROM r2")
    with pytest.raises(data.DataError, match=r"returns 2 column\(s\) \(u, m\), expected 4"):
        data.load_postgres(postgres, "SELECT u, m FROM r2")
    with pytest.raises(data.DataError, match=r"'SELECT \* FROM nowhere' failed: .*nowhere"):
        data.load_postgres(postgres, "SELECT * FROM nowhere")
    with pytest.raises(data.DataError, match="column 'user_id' is string"):
        data.load_postgres(postgres, "SELECT name, id, 4.0, 0 FROM m2")


def test_a_server_that_refuses_and_a_url_with_a_password(postgres, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "wrong")
    with pytest.raises(data.DataError, match="cannot connect .*password authentication failed"):
        data.load_postgres(postgres, "SELECT 1")
    with pytest.raises(flowconfig.ConfigError, match=r"data.source \(--data-source\) must not hold a password"):
        flowconfig.check({"data.source": "postgresql://movierec:secret@127.0.0.1/postgres"})


def test_the_interaction_store_in_postgresql_keeps_every_concurrent_rating_once(postgres, ml100k_dir):
    """`movierec serve --store postgresql://...`: many writers at once, retries, and the next run's loader."""
    from concurrent.futures import ThreadPoolExecutor

    from movierec.feedback import InteractionStore

    store = InteractionStore(postgres)
    assert store.add(1, 10, 4.0, 100) is True and store.add(1, 10, 4.0, 100) is False

    def write(writer: int) -> int:
        return sum(store.add(1000 + writer, movie, 3.5, 5) for movie in range(1, 51))

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(write, range(8))) == [50] * 8
        assert list(pool.map(write, range(8))) == [0] * 8  # every request retried: nothing new
    assert store.count() == 401 and InteractionStore(postgres).count() == 401
    assert [(r.movie_id, r.rating) for r in store.ratings_of(1)] == [(10, 4.0)]
    settings = Settings(data=DataSettings(dir=str(ml100k_dir), feedback_store=postgres))
    # kept apart from the data's ratings: they join the training split only (tests/test_feedback.py)
    stats = pipeline.load_data(settings).stats()
    assert (stats["ratings"], stats["feedback_ratings"]) == (100_000, 401)


def test_a_store_url_with_a_password_is_refused(tiny_bundle, tmp_path, capsys):
    from movierec import cli

    (tmp_path / "model.zip").write_bytes(tiny_bundle)
    code = cli.main(["--model", str(tmp_path / "model.zip"), "serve", "--store", "postgresql://u:secret@h/db"])
    assert code == 2 and "--store must not hold a password" in capsys.readouterr().err
    with pytest.raises(flowconfig.ConfigError, match="must not hold a password"):
        flowconfig.check({"data.feedback_store": "postgresql://u:secret@h/db"})
