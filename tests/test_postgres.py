"""PostgreSQL as a data source, against a real server: Debian's ``postgresql`` package started by
the fixture (``initdb`` + ``pg_ctl``) in a temporary folder on a loopback port, as `.ci/run`
installs it."""

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import call, free_port

from benchmarks import pgserver
from movierec import data, pipeline
from movierec.core.settings import DataSettings, Settings
from movierec.serving.recommender import Recommender
from movierec.training import flowconfig

PASSWORD = "movierec-tests"


@pytest.fixture(scope="module")
def postgres():
    """A running server (``benchmarks.pgserver``): its URL, the password in PGPASSWORD."""
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

    from movierec.serving.store import InteractionStore

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


@pytest.mark.parametrize("url", ["postgresql://u:secret@h/db", "postgresql://u@h/db?password=secret",
                                 "postgres://u@h/db?sslmode=require&pass%77ord=secret",
                                 "postgresql://u@h/db?sslpassword=secret"])
def test_a_password_anywhere_in_a_database_url_is_refused_and_never_printed(tiny_bundle, tmp_path, capsys, url):
    """libpq also reads a password from the query (percent-encoded names too): such a URL passed
    the check before, and its password went into the run's settings, the start log and the serve
    banner. It is refused everywhere now, and the refusal does not repeat it."""
    from movierec import cli

    (tmp_path / "model.zip").write_bytes(tiny_bundle)
    code = cli.main(["--model", str(tmp_path / "model.zip"), "serve", "--store", url])
    err = capsys.readouterr().err
    assert code == 2 and "must not hold a password" in err and "secret" not in err, err
    assert err.startswith("movierec: error: --store post") and "***" in err
    for key in ("data.feedback_store", "data.source"):
        with pytest.raises(flowconfig.ConfigError, match="must not hold a password") as error:
            flowconfig.check({key: url})
        assert "secret" not in str(error.value)


def test_a_database_error_prints_the_url_without_its_password(postgres):
    """A URL that holds a password despite the checks (the library called directly) is printed
    redacted: before, the error repeated it."""
    with pytest.raises(data.DataError, match=r"\?password=\*\*\*: cannot connect .*password authentication failed"
                       ) as error:
        data.load_postgres(postgres + "?password=not-the-password", "SELECT 1")
    assert "not-the-password" not in str(error.value)

def _pg_ctl(data: Path, action: str) -> None:
    """``pg_ctl stop``, ``start`` or ``restart`` of the fixture's server (its data folder ``data``),
    started again with the options it last ran with (its port and socket folder)."""
    import shlex

    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    ran_with = shlex.split((data / "postmaster.opts").read_text())[1:]  # after the postgres program
    if "-D" in ran_with:  # pg_ctl gives the data folder itself
        del ran_with[ran_with.index("-D"):ran_with.index("-D") + 2]
    subprocess.run([*as_owner, str(pgserver.server_binaries() / "pg_ctl"), "-D", str(data), "-l",
                    str(data.parent / "log"), "-o", shlex.join(ran_with), "-m", "fast", "-w", action], check=True,
                   capture_output=True, timeout=60)


def _data_folder(url: str) -> Path:
    import psycopg

    with psycopg.connect(url) as conn:
        return Path(conn.execute("SHOW data_directory").fetchone()[0])


def _server_connections(url: str) -> int:
    """Connections the serve process holds (it connects as application ``movierec-serve``)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'movierec-serve'"
                            ).fetchone()[0]


@contextlib.contextmanager
def _serving_from(url: str, bundle: bytes, folder: Path) -> Iterator[tuple[str, list[str], str]]:
    """`movierec serve --store URL` of this checkout: (base URL, its output lines so far, filled in
    when the block ends, a backend API key whose writes no rate limits)."""
    from conftest import wait_for_http

    from movierec.serving.access import KEYS_FILE, KeyFile

    (folder / "model.zip").write_bytes(bundle)
    _, key = KeyFile(folder / KEYS_FILE).add(backend=True)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PGPASSWORD": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "movierec.cli", "--model", str(folder / "model.zip"), "serve",
                             "--port", str(port), "--store", url + "?application_name=movierec-serve",
                             "--write-rate", "1e6"], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc, "movierec serve")
        yield f"http://127.0.0.1:{port}", output, key
    finally:
        proc.terminate()
        output.extend(proc.communicate(timeout=30)[0].splitlines())
    assert not [line for line in output if "Traceback" in line or PASSWORD in line], output


def _status(base: str, method: str, path: str, body: dict | None = None, key: str | None = None) -> int:
    try:
        return call(base, method, path, body, key=key)[0]
    except urllib.error.URLError:  # no answer at all: as bad as a 500
        return -1


def test_serve_uses_a_restarted_postgresql_again_without_a_single_error(postgres, tiny_bundle, tmp_path):
    """`serve --store postgresql://...`, traffic from 16 clients, `pg_ctl restart` in the middle of
    it. Before: requests after the restart answered 500, a known user's recommendations too, until
    serve was restarted, and the server held a connection per worker thread (13 here, up to 41).
    Now every request is answered as usual (the pool replaces the dropped connections, a statement
    that lost its connection runs again) and the server holds at most POOL_SIZE connections."""
    from movierec.serving.store import POOL_SIZE

    rec = Recommender.from_bytes(tiny_bundle)
    users, movies = [int(u) for u in rec.user_ids[:8]], [int(m) for m in rec.item_ids[:50]]
    statuses: dict[str, list[int]] = {"GET": [], "POST": []}
    stop, held = threading.Event(), []

    def client(base: str, n: int, key: str) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            statuses["GET"].append(_status(base, "GET", f"/users/{users[n % len(users)]}/recommendations?k=5"))
            statuses["POST"].append(_status(base, "POST", "/ratings", {
                "user_id": 7_000_000 + n, "movie_id": movies[turn % len(movies)], "rating": 4.0,
                "timestamp": int(time.time()) + turn % 100}, key))

    data = _data_folder(postgres)
    with _serving_from(postgres, tiny_bundle, tmp_path) as (base, _, key), ThreadPoolExecutor(16) as pool:
        for n in range(16):
            pool.submit(client, base, n, key)
        time.sleep(1.5)
        held.append(_server_connections(postgres))
        _pg_ctl(data, "restart")
        time.sleep(3.0)
        held.append(_server_connections(postgres))
        stop.set()
    print({method: Counter(got) for method, got in statuses.items()}, "connections held:", held)
    assert statuses["GET"] and set(statuses["GET"]) == {200}, Counter(statuses["GET"])
    assert set(statuses["POST"]) == {201}, Counter(statuses["POST"])
    assert 1 <= max(held) <= POOL_SIZE, held


def test_while_postgresql_is_down_known_users_still_get_recommendations(postgres, tiny_bundle, tmp_path):
    """The store stopped, not restarted: a user the model knows is recommended to from the model
    alone (logged once), a user known only from the store and a new rating get a 503 that says
    so; once the server is back, stored ratings count again (before: 500s until serve restarted).
    Only the first request waits for the pool (POOL_WAIT): then the store is left alone for a
    while, so the rest answer at once (before: each waited 3 s, holding a worker thread), and the
    outage is logged twice, when it starts and when it ends (before: each 503 too)."""
    from movierec.serving.store import POOL_WAIT

    rec = Recommender.from_bytes(tiny_bundle)
    known, movies = int(rec.user_ids[3]), [int(m) for m in rec.item_ids[:3]]
    newcomer = int(rec.user_ids.max()) + 77
    data = _data_folder(postgres)
    with _serving_from(postgres, tiny_bundle, tmp_path) as (base, output, key):
        first = call(base, "GET", f"/users/{known}/recommendations?k=5")[1]["recommendations"][0]["movie_id"]
        assert call(base, "POST", "/ratings", {"user_id": known, "movie_id": first, "rating": 1.0}, key=key)[0] == 201
        for movie in movies:
            rating = {"user_id": newcomer, "movie_id": movie, "rating": 5.0}
            assert call(base, "POST", "/ratings", rating, key=key)[0] == 201
        _pg_ctl(data, "stop")
        took = []
        try:
            for _ in range(6):
                started = time.monotonic()
                status, body = call(base, "GET", f"/users/{known}/recommendations?k=5")
                took.append(time.monotonic() - started)
                assert status == 200 and [m["movie_id"] for m in body["recommendations"]] == [
                    r.movie_id for r in rec.recommend(known, 5)]  # the model's own list: the rating unread
            started = time.monotonic()
            assert call(base, "GET", f"/users/{newcomer}/recommendations?k=5") == (
                503, {"error": "the ratings store is unavailable; try again later"})
            rating = {"user_id": known, "movie_id": movies[0], "rating": 3.0}
            assert call(base, "POST", "/ratings", rating, key=key)[0] == 503
            took.append(time.monotonic() - started)
        finally:
            _pg_ctl(data, "start")
        print("seconds per request in the outage:", [round(t, 3) for t in took])
        assert max(took[1:]) < 1.0 < POOL_WAIT, took
        deadline = time.monotonic() + 3 * POOL_WAIT  # the store is tried again POOL_WAIT after it failed
        while call(base, "GET", f"/users/{newcomer}/recommendations?k=5")[0] == 503:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        after = call(base, "GET", f"/users/{known}/recommendations?k=5")
        newcomer_after = call(base, "GET", f"/users/{newcomer}/recommendations?k=5")[0]
    logged = "\n".join(output)
    assert after[0] == 200 and first not in [m["movie_id"] for m in after[1]["recommendations"]], logged
    assert newcomer_after == 200
    assert logged.count("recommending to known users without their stored ratings") == 1, logged
    assert logged.count("the ratings store can be read again") == 1, logged
    assert len([line for line in output if "ratings store" in line]) == 2, logged


def test_a_store_building_its_index_leaves_the_running_servers_writes_alone(postgres):
    """A store opened against a table without the index builds it; while that waits for a
    transaction still open on the table, another server's write goes through (before: a plain
    CREATE INDEX queued for its table lock, and every write queued behind it, here past a 2 s
    lock_timeout; on a large table, for as long as the build read every row)."""
    import psycopg

    from movierec.serving.store import TABLE, InteractionStore

    InteractionStore(postgres).close()  # the table, as a running server has it
    with psycopg.connect(postgres, autocommit=True) as admin, psycopg.connect(postgres) as open_txn:
        admin.execute(f"DROP INDEX IF EXISTS {TABLE}_user_time")  # as before this version's index
        open_txn.execute(f"INSERT INTO {TABLE} VALUES (9001, 1, 3.0, 1, '')")  # a writer mid-transaction
        with ThreadPoolExecutor(1) as pool:
            opening = pool.submit(InteractionStore, postgres)  # a new server starting
            try:
                deadline = time.monotonic() + 30
                while not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND query LIKE 'CREATE INDEX%'").fetchone()[0]:
                    assert time.monotonic() < deadline and not opening.done(), "the index build never waited"
                    time.sleep(0.05)
                with psycopg.connect(postgres, autocommit=True) as writer:
                    writer.execute("SET lock_timeout = '2s'")
                    writer.execute(f"INSERT INTO {TABLE} VALUES (9002, 1, 4.0, 1, '')")  # another server's write
            finally:
                open_txn.commit()  # the build goes on (the pool waits for it, failed or not)
            store = opening.result(timeout=60)
        valid = admin.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass",
                              (f"{TABLE}_user_time",)).fetchone()
    assert valid == (True,) and {r.rating for u in (9001, 9002) for r in store.ratings_of(u)} == {3.0, 4.0}
    store.close()
