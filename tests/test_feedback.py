"""The feedback loop's serving half: ratings sent to `POST /ratings` are kept in the interaction
store (SQLite, WAL) and change what the same server recommends, without retraining."""

import json
import multiprocessing
import sqlite3
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import call, serving
from store_writers import correct_many, write_many
from test_postgres import postgres  # noqa: F401 (the fixture: a real PostgreSQL server on loopback)

from movierec.serving.access import KEYS_FILE, KeyFile
from movierec.serving.recommender import Recommender
from movierec.serving.store import InteractionStore


def test_the_store_keeps_each_rating_once_and_each_movies_latest(tmp_path):
    store = InteractionStore(tmp_path / "r.sqlite3")
    assert store.add(7, 50, 4.0, 100) is True
    assert store.add(7, 50, 4.0, 100) is False  # a retried request: the same rating, kept once
    assert store.add(7, 50, 2.0, 200) is True  # rated again later: a new rating
    assert store.add(7, 51, 5.0, 150) is True
    assert [(r.movie_id, r.rating) for r in store.ratings_of(7)] == [(51, 5.0), (50, 2.0)]
    assert store.count() == 3 and store.ratings_of(8) == []
    for bad in ((7, 50, 5.5), (7, 50, float("nan")), (-1, 50, 3.0), (7, 2**63 - 1, 3.0)):
        with pytest.raises(ValueError):
            store.add(*bad)
    mode = sqlite3.connect(tmp_path / "r.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_correction_is_stored_even_within_the_same_second_and_after_a_future_rating(tmp_path):
    """A changed rating with the rating's own timestamp (or in the same second) was dropped as
    a duplicate, and one stamped far ahead outranked every later correction for good."""
    store = InteractionStore(tmp_path / "r.sqlite3")
    first = store.rate(7, 50, 4.0, 100, written_by="mr_a")
    assert (first.stored, first.correction, first.previous, first.timestamp) == (True, False, None, 100)
    again = store.rate(7, 50, 4.0, 100)
    assert (again.stored, again.correction, again.previous) == (False, False, 4.0)  # a retry: nothing new
    fix = store.rate(7, 50, 2.0, 100, written_by="mr_b")  # the same second
    assert (fix.stored, fix.correction, fix.previous, fix.timestamp) == (True, True, 4.0, 101)
    assert [(r.movie_id, r.rating) for r in store.ratings_of(7)] == [(50, 2.0)]
    store.rate(8, 60, 5.0, 2**40)  # pinned far ahead (a row from before the server bounded client time)
    fix = store.rate(8, 60, 1.0)
    assert fix.correction and fix.timestamp == 2**40 + 1 and store.ratings_of(8)[0].rating == 1.0
    assert store.table().column("written_by").to_pylist() == ["mr_a", "mr_b", "", ""]


OLD_SCHEMA = """CREATE TABLE movierec_feedback (user_id BIGINT NOT NULL, movie_id BIGINT NOT NULL,
    rating REAL NOT NULL CHECK (rating >= 0.5 AND rating <= 5), timestamp BIGINT NOT NULL,
    PRIMARY KEY (user_id, movie_id, timestamp))"""  # the table as stores written before keys have it


def test_a_store_written_before_keys_gains_the_written_by_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(OLD_SCHEMA)
        old.execute("INSERT INTO movierec_feedback VALUES (1, 10, 4.0, 100)")
    store = InteractionStore(path)
    assert store.rate(1, 11, 3.0, 200, written_by="mr_0123456789ab").stored
    table = store.table()
    assert table.column_names == ["user_id", "item_id", "rating", "timestamp", "written_by"]
    assert str(table.schema.field("written_by").type) == "string"
    assert table.column("written_by").to_pylist() == ["", "mr_0123456789ab"]
    assert InteractionStore(path).count() == 2  # opened again (and by several processes at once): no error


def test_a_postgresql_table_from_before_keys_is_migrated_and_takes_corrections(postgres):  # noqa: F811
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS movierec_feedback")
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO movierec_feedback VALUES (1, 10, 3.7, 100)")
    store, again = InteractionStore(postgres), InteractionStore(postgres)  # the second finds it migrated
    assert again.rate(1, 10, 3.7, 100).stored is False  # REAL keeps 3.7 as float32: still the same rating
    fix = store.rate(1, 10, 2.0, 100, written_by="mr_0123456789ab")
    assert (fix.stored, fix.correction, fix.timestamp) == (True, True, 101)
    assert [(r.movie_id, r.rating) for r in store.ratings_of(1, latest=1)] == [(10, 2.0)]
    assert store.table().column("written_by").to_pylist() == ["", "mr_0123456789ab"]


def test_a_flooded_user_costs_their_latest_ratings_only(tmp_path):
    """One user with a million rows took 3.4 s a request (every row read, then sorted): now the
    index gives their latest ``latest`` newest first, without a sort."""
    store = InteractionStore(tmp_path / "r.sqlite3")
    with sqlite3.connect(tmp_path / "r.sqlite3") as db:
        db.executemany("INSERT INTO movierec_feedback (user_id, movie_id, rating, timestamp) VALUES (1, ?, 3.0, ?)",
                       ((n % 700, 1000 + n) for n in range(20_000)))
        plan = " ".join(row[-1] for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT user_id, movie_id, rating, timestamp FROM movierec_feedback "
            "WHERE user_id = 1 ORDER BY timestamp DESC LIMIT 1000"))
    assert "movierec_feedback_user_time" in plan and "TEMP B-TREE" not in plan, plan
    latest = store.ratings_of(1, latest=500)
    assert len(latest) == 500 and latest[-1].timestamp == 1000 + 19_999 and latest[0].timestamp == 1000 + 19_500
    assert len(store.ratings_of(1)) == 700  # the default 1,000 latest rows: every movie's latest rating


def test_training_counts_each_keys_ratings_and_leaves_out_the_keys_it_is_told(tmp_path, ml100k_dir):
    """The next run's loader counts the store's rows per API key (the start card's table) and
    leaves out the rows of the keys --feedback-leave-out names; an unknown key id is noted, a
    malformed one refused before loading, and the option without a store is an error."""
    from movierec import pipeline
    from movierec.core.settings import DataSettings, Settings, key_ids_problem
    from movierec.reports import cards

    path = tmp_path / "r.sqlite3"
    store = InteractionStore(path)
    spam, shop = "mr_0123456789ab", "mr_ba9876543210"
    for movie in range(1, 8):  # 7 by the spammer, 3 by the shop's key, 2 written without a key
        store.rate(5000, movie, 5.0, written_by=spam)
    for movie in (1, 2, 3):
        store.rate(5001, movie, 4.0, written_by=shop)
    for movie in (4, 5):
        store.rate(5002, movie, 3.0)

    def loaded(leave_out: str):
        return pipeline.load_data(Settings(data=DataSettings(dir=str(ml100k_dir), feedback_store=str(path),
                                                             feedback_leave_out=leave_out)))

    everything = loaded("")
    assert everything.stats()["ratings"] == 100_000 and everything.feedback.num_rows == 12
    assert everything.feedback_keys == [{"key": "(no key)", "ratings": 2, "training": True},
                                        {"key": spam, "ratings": 7, "training": True},
                                        {"key": shop, "ratings": 3, "training": True}]
    without_spam = loaded(f"{spam}, mr_00000000000f")
    assert sorted(set(without_spam.feedback["user_id"].to_pylist())) == [5001, 5002]
    assert without_spam.feedback.num_rows == 5
    assert [k["training"] for k in without_spam.feedback_keys] == [True, False, True]
    assert any("7 ratings of 2 key(s) left out" in w and "no ratings of key mr_00000000000f" in w
               for w in without_spam.warnings)
    assert loaded("unkeyed").feedback.num_rows == 10
    card = json.dumps([part.render() for part in cards.data_card(without_spam, "ml-100k")])
    assert "Ratings users sent, by API key" in card and f'["{spam}", "7", "False"]' in card
    # the same with a restored artifact (start -> split), as the flow passes it
    restored = type(without_spam).from_bytes(without_spam.to_bytes())
    assert restored.feedback_keys == without_spam.feedback_keys
    assert "expected API key ids" in key_ids_problem("mr_xyz,unkeyed")
    with pytest.raises(ValueError, match="give the store too"):
        pipeline.load_data(Settings(data=DataSettings(dir=str(ml100k_dir), feedback_leave_out=spam)))


def test_writers_correcting_one_rating_at_once_all_land(tmp_path):
    """8 processes correct the same rating 30 times each within one second (each with its own
    stars): a correction that meets another writer's (same timestamp) is tried again one second
    on, so every change reported stored is a row, and each writer's first one is a change."""
    path = str(tmp_path / "r.sqlite3")
    InteractionStore(path)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        stored = pool.map(correct_many, [(path, writer) for writer in range(8)])
    rows = sqlite3.connect(path).execute("SELECT count(*), count(DISTINCT timestamp) FROM movierec_feedback"
                                         ).fetchone()
    assert min(stored) >= 1 and rows == (sum(stored), sum(stored))


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "r.sqlite3")
    InteractionStore(path)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        stored = pool.map(write_many, [(path, writer, 200) for writer in range(8)])
    assert stored == [200] * 8 and InteractionStore(path).count() == 1600


def backend_key(folder) -> str:
    """The secret of a new key that may write for any user, in ``folder``'s keys file (where a
    server started there looks), with a rate no test reaches."""
    return KeyFile(folder / KEYS_FILE).add(backend=True, name="tests", rate=100_000)[1]


@pytest.fixture(scope="module")
def feedback_server(tmp_path_factory, tiny_bundle, light_install):
    """(base URL, the store's file, the model, a backend key's secret)."""
    folder = tmp_path_factory.mktemp("feedback")
    key = backend_key(folder)
    with serving(light_install, tiny_bundle, folder) as (base, store):
        yield base, store, Recommender.from_bytes(tiny_bundle), key


def test_a_known_user_no_longer_gets_what_they_just_rated(feedback_server):
    base, _, rec, key = feedback_server
    user = int(rec.user_ids[4])
    _, before = call(base, "GET", f"/users/{user}/recommendations?k=5")
    first = before["recommendations"][0]["movie_id"]
    status, answer = call(base, "POST", "/ratings", {"user_id": user, "movie_id": first, "rating": 4.5}, key=key)
    assert status == 201 and answer["stored"] is True and answer["correction"] is False
    _, after = call(base, "GET", f"/users/{user}/recommendations?k=5")
    assert first not in [m["movie_id"] for m in after["recommendations"]]
    assert [m["movie_id"] for m in after["recommendations"]] == [
        r.movie_id for r in rec.recommend(user, 5, also_exclude=[first])]


def test_a_rating_waiting_for_the_database_does_not_stall_other_requests(feedback_server):
    """Store calls run in a worker thread: while a rating waits for the write lock another writer
    holds (up to SQLite's busy timeout, 30 s), the server answers everything else, and the rating is
    stored once the lock is free. On the event loop the health check waited behind it."""
    base, store, rec, key = feedback_server
    blocker = sqlite3.connect(store, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call, base, "POST", "/ratings",
                                  {"user_id": 4_000_000, "movie_id": int(rec.item_ids[0]), "rating": 4.0}, key=key)
            time.sleep(1.0)  # the request reaches the lock
            assert call(base, "GET", "/health") == (200, {"status": "ok"})
            assert not pending.done()
            blocker.execute("COMMIT")
            status, answer = pending.result(timeout=30)
            assert status == 201 and answer["stored"] is True
    finally:
        blocker.close()


def test_a_new_user_who_rated_through_the_api_gets_recommendations_from_those_ratings(feedback_server):
    base, _, rec, key = feedback_server
    new = int(rec.user_ids.max()) + 1000
    assert call(base, "GET", f"/users/{new}/recommendations")[0] == 404  # nothing known of them yet
    liked = [int(m) for m in rec.item_ids[:3]]
    for movie in liked:
        assert call(base, "POST", "/ratings", {"user_id": new, "movie_id": movie, "rating": 5.0}, key=key)[0] == 201
    status, body = call(base, "GET", f"/users/{new}/recommendations?k=5")
    assert status == 200
    assert [m["movie_id"] for m in body["recommendations"]] == [
        r.movie_id for r in rec.recommend_for_history([(m, 5.0) for m in liked], 5)]


@pytest.mark.parametrize("body, status, words", [
    ({"user_id": 1, "movie_id": 999999, "rating": 4.0}, 404, "unknown movie id 999999"),
    ({"user_id": 1, "movie_id": 1, "rating": 7.0}, 422, "rating"),
    ({"user_id": 1, "movie_id": 1, "rating": "4"}, 422, "rating"),
    ({"user_id": 1, "movie_id": 1}, 422, "rating"),
    ({"user_id": True, "movie_id": 1, "rating": 4.0}, 422, "user_id"),
    ({"user_id": 1, "movie_id": 1, "rating": 4.0, "timestamp": -5}, 422, "timestamp"),
    # a time far ahead outranked every later rating of the movie for good
    ({"user_id": 1, "movie_id": 1, "rating": 4.0, "timestamp": 2**40}, 422, "from the server's clock"),
    ({"user_id": 1, "movie_id": 1, "rating": 4.0, "timestamp": 1_000_000_000}, 422, "leave it out"),
])
def test_bad_ratings_are_refused_with_the_reason(feedback_server, body, status, words):
    base, _, rec, key = feedback_server
    if body["movie_id"] == 1:
        body = {**body, "movie_id": int(rec.item_ids[0])}
    got, answer = call(base, "POST", "/ratings", body, key=key)
    assert got == status and words in answer["error"], answer


def test_many_concurrent_clients_lose_no_rating(feedback_server):
    base, store, rec, key = feedback_server
    movies = [int(m) for m in rec.item_ids[:25]]
    posts = [{"user_id": 5_000_000 + client, "movie_id": movie, "rating": 3.5}
             for client in range(16) for movie in movies]

    def send(body: dict) -> int:
        request = urllib.request.Request(base + "/ratings", json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, posts + posts[:40]))  # 40 retried requests
    assert statuses == [201] * len(statuses)
    rows = sqlite3.connect(store).execute("SELECT count(*) FROM movierec_feedback WHERE user_id >= 5000000"
                                          ).fetchone()[0]
    assert rows == len(posts) == 400


def _rows(data_split, which: np.ndarray) -> set[tuple[int, int, float, int]]:
    """The (user id, movie id, rating, timestamp) rows behind ``which`` split indices."""
    enc = data_split.enc
    return set(zip(enc.user_ids[enc.user_idx[which]].tolist(), enc.item_ids[enc.item_idx[which]].tolist(),
                   enc.rating[which].tolist(), enc.timestamp[which].tolist()))


@pytest.mark.parametrize("protocol", ["tfrs", "temporal"])
def test_ratings_users_send_join_training_only_and_leave_the_test_split_and_its_figures_alone(
        ml100k_dir, tmp_path, protocol):
    """Fake 5-star ratings of 300 test pairs raised the reported nDCG@10 (they landed in the test
    split, or were trained on while scored); with the temporal protocol no sent rating reached
    training, with tfrs a fifth were held out. Now: the split is the data's own and the figures
    are those of a run without the store; sent ratings of test pairs are left out of training and
    all others train, new users' included; a rating of a movie the data lacks is dropped, counted."""
    from movierec import pipeline
    from movierec.core.settings import DataSettings, Settings
    from movierec.reports import cards
    from movierec.training.evaluation import Evaluator

    plain_settings = Settings(data=DataSettings(dir=str(ml100k_dir)), protocol=protocol)
    plain = pipeline.split_data(pipeline.load_data(plain_settings).to_bytes(), plain_settings)
    enc, test = plain.enc, plain.split.test
    store = InteractionStore(tmp_path / "ratings.sqlite3")
    faked = test[:: len(test) // 300][:300]
    for user, movie in zip(enc.user_ids[enc.user_idx[faked]], enc.item_ids[enc.item_idx[faked]]):
        store.add(int(user), int(movie), 5.0, 1_900_000_000)
    settings = Settings(data=DataSettings(dir=str(ml100k_dir), feedback_store=store.location), protocol=protocol)

    def popularity_row(data_split) -> dict:
        evaluator = Evaluator(data_split.enc, data_split.split)
        return evaluator.factorized_row("popularity", np.ones((data_split.enc.n_users, 1), np.float32),
                                        evaluator.popularity[:, None], evaluator.item_mean[evaluator.test_items])

    faking = pipeline.split_data(pipeline.load_data(settings).to_bytes(), settings)
    assert _rows(faking, faking.split.test) == _rows(plain, test)
    assert _rows(faking, faking.split.train) == _rows(plain, plain.split.train)
    assert faking.split.feedback_left_out == 300 and faking.split.feedback_train == 0
    assert popularity_row(faking) == popularity_row(plain)

    new = int(enc.user_ids.max()) + 1
    liked = [int(m) for m in enc.item_ids[:40]]
    for n, movie in enumerate(liked):
        store.add(new, movie, 4.0, 1_900_000_100 + n)
    store.add(new, 999_999, 3.0, 1_900_000_200)  # a movie the data does not have: dropped, not fatal
    dataset = pipeline.load_data(settings)
    assert (f"{store.location}: 340 ratings users sent added, for training only (the split leaves out those of its "
            "test pairs) (1 ratings of movies not in the data dropped (first: movie 999999))") in dataset.warnings
    assert dataset.stats()["feedback_ratings"] == 340 and dataset.stats()["ratings"] == 100_000
    both = pipeline.split_data(dataset.to_bytes(), settings)
    assert _rows(both, both.split.test) == _rows(plain, test)
    assert _rows(both, both.split.train) == _rows(plain, plain.split.train) | {
        (new, movie, 4.0, 1_900_000_100 + n) for n, movie in enumerate(liked)}
    assert (both.split.feedback_train, both.split.feedback_left_out) == (40, 300)
    card = cards.split_card(both, protocol)[0].render()["source"]
    assert "**40** of 340 joined training" in card and "300 rate a (user, movie) pair of the test split" in card


def test_a_run_with_the_feedback_store_learns_what_a_new_user_rated(runs, light_install, metaflow_root, tmp_path):
    """run -> serve -> a new user rates only horror films through the API -> run again with
    --feedback-store -> the new model, which now knows that user, recommends them horror. They rate
    every other one of the 40 most rated horror films, so popular horror is left to recommend. With
    10 ratings the outcome hung on the ranker's L2 penalty, which validation picks at noise level
    (0.1 and 3.0 within 0.0004 nDCG@10, and the rating model differs from run to run): at 3.0 the
    popularity feature weighs more and the user got 0 horror films, at 0.1 two. With 20 they get
    5-6 under either penalty."""
    from conftest import BUDGET, FLOW
    from metaflow import Runner

    from movierec.serving.bundle import promoted_runs
    from movierec.serving.recommender import Recommender
    from movierec.training.promotion import Scores, decide

    first = runs[3]["publish"].task.data.bundle
    rec = Recommender.from_bytes(first)
    horror = [int(m) for m, g in zip(rec.item_ids, rec.genres) if "Horror" in g]
    liked = sorted(horror, key=lambda m: -rec.popularity[int(rec.item_ids.searchsorted(m))])[:40:2]
    new = int(rec.user_ids.max()) + 1
    key = backend_key(tmp_path)
    with serving(light_install, first, tmp_path) as (base, store):
        for movie in liked:
            assert call(base, "POST", "/ratings", {"user_id": new, "movie_id": movie, "rating": 5.0}, key=key)[0] == 201
    with Runner(FLOW, show_output=False, pylint=False, cwd=metaflow_root).run(
            **BUDGET, feedback_store=str(store), index_dir=str(tmp_path / "pypi")) as running:
        assert running.status == "successful", (running.stdout + running.stderr)[-3000:]
        assert f"{store}: 20 ratings users sent added" in running.stdout
        second = Recommender.from_bytes(running.run["publish"].task.data.bundle)
        gated = running.run["publish"].task.data.promotion
    # the second model was gated against a promoted one of the same data (this module's first, or another's)
    assert gated["champion_run"] in [run.pathspec for run in promoted_runs()] and gated["champion"] is not None
    assert gated["champion"]["rated_pairs"] == gated["challenger"]["rated_pairs"] > 0
    again = decide(Scores(**gated["challenger"]), Scores(**gated["champion"]), ndcg_tolerance=0.01,
                   rmse_tolerance=0.01)
    assert again.promote == gated["decision"]["promote"] and again.reasons == gated["decision"]["reasons"]
    # a known user now, and every rating they sent was trained on (feedback never goes to the test split)
    assert second.knows_user(new) and sorted(second.rated(new)) == sorted(liked)
    def horror(user: int) -> int:
        return sum("Horror" in r.genres for r in second.recommend(user, k=10))

    others = [horror(int(u)) for u in second.user_ids[:100]]
    mine, usual = horror(new), sum(others) / len(others)
    print(f"horror films in the top 10: the new user {mine}, other users {usual:.2f} on average")
    assert mine >= 2 and mine >= 3 * usual, (mine, usual, [(r.title, r.genres) for r in second.recommend(new)])


class _ReplyLostStore(InteractionStore):
    """A store whose first INSERT commits and then loses its reply, as a PostgreSQL connection
    that drops after the commit: ``_execute`` runs the statement once more on a fresh connection
    (its retry of a dropped statement), and that run meets the committed row and stores nothing."""

    lost = False

    def _execute(self, sql: str, params: tuple = ()):
        if sql.startswith("INSERT") and not self.lost:
            self.lost = True
            super()._execute(sql, params)  # committed; the reply never came
        return super()._execute(sql, params)


def test_a_rating_whose_insert_reply_was_lost_is_answered_stored(tmp_path):
    """Before: the retried INSERT hit ON CONFLICT DO NOTHING and rate() answered stored: false
    (POST /ratings: 200, "already had that rating") for a rating it had just written."""
    store = _ReplyLostStore(tmp_path / "r.sqlite3")
    store.rate(7, 50, 2.0, 100, written_by="mr_0123456789ab")
    store.lost = False
    fix = store.rate(7, 50, 4.0, 100, written_by="mr_0123456789ab")
    assert (fix.stored, fix.correction, fix.previous, fix.timestamp) == (True, True, 2.0, 101)
    store.lost = False
    first = store.rate(8, 60, 3.5, 200, written_by="mr_0123456789ab")
    assert (first.stored, first.correction, first.previous, first.timestamp) == (True, False, None, 200)
    assert store.count() == 3  # each written once
    again = store.rate(8, 60, 3.5, 300, written_by="mr_0123456789ab")  # a client's retry: still nothing new
    assert (again.stored, again.previous, again.timestamp) == (False, 3.5, 200)


def test_another_keys_identical_row_at_that_moment_is_not_taken_for_ones_own(tmp_path):
    """The row an insert met is its own only if it holds its key too: another key's rating of
    the same stars at the same second was theirs, and this rating stored nothing."""
    store = InteractionStore(tmp_path / "r.sqlite3")
    assert store.rate(7, 50, 2.0, 100, written_by="mr_aaaaaaaaaaaa").stored

    class OtherKeyFirst(InteractionStore):
        def _execute(self, sql: str, params: tuple = ()):
            if sql.startswith("INSERT") and params[3] == 101:  # another key's insert lands first
                super()._execute(sql, (*params[:4], "mr_bbbbbbbbbbbb"))
            return super()._execute(sql, params)

    change = OtherKeyFirst(tmp_path / "r.sqlite3").rate(7, 50, 4.0, 100, written_by="mr_aaaaaaaaaaaa")
    assert (change.stored, change.previous, change.timestamp) == (False, 4.0, 101)
    assert store.table().column("written_by").to_pylist() == ["mr_aaaaaaaaaaaa", "mr_bbbbbbbbbbbb"]
