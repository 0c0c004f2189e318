"""Movies added to a served model after training (movierec.serving.new_movies): recommended,
found and searched without retraining, ranked with a stand-in's features."""

import json
import re

import numpy as np
import pytest

from movierec.errors import RecommenderError, UnknownMovieError
from movierec.serving.new_movies import NEIGHBOURS, AddedMovies, NewMovie, read_new_movies
from movierec.serving.recommender import Recommender


@pytest.fixture
def rec(tiny_bundle):
    return Recommender.from_bytes(tiny_bundle)


def _twin(rec: Recommender, m: int, movie_id: int = 10**6):
    """Add a movie whose features are catalogue movie ``m``'s (an unknown title word is no feature)."""
    b = rec.bundle
    return rec.add_movie(movie_id, f"{b.titles[m]} Zyzzyva", b.genres[m], int(b.years[m]))


def _top_movie(rec: Recommender) -> int:
    """The known movie recommended to the most users (dense index)."""
    counts: dict[int, int] = {}
    for u in rec.bundle.user_ids:
        for r in rec.recommend(int(u), 10):
            counts[r.movie_id] = counts.get(r.movie_id, 0) + 1
    return rec._movie(max(counts, key=counts.get))


def test_a_movie_with_a_known_movies_features_ranks_right_after_it_for_every_user(rec):
    """Its stand-in is that movie wherever the user has not rated it, with every ranker feature the
    same (the retrieval score moved by a feature difference of zero): the same score, next to it (a
    tie's order is float rounding's)."""
    m = _top_movie(rec)
    added = _twin(rec, m)
    assert added.nearest.movie_id == int(rec.bundle.item_ids[m]) and added.nearest.score == pytest.approx(1, abs=1e-5)
    reached = 0
    for u in rec.bundle.user_ids:
        listed = rec.recommend(int(u), 20)
        ids = [r.movie_id for r in listed]
        if int(rec.bundle.item_ids[m]) in ids[1:-1]:  # room for the new movie on either side
            at, new = ids.index(int(rec.bundle.item_ids[m])), ids.index(10**6) if 10**6 in ids else -1
            assert abs(new - at) == 1 and listed[new].score == pytest.approx(listed[at].score, abs=1e-4)
            assert listed[new].predicted_rating is None and listed[at].predicted_rating is not None
            reached += 1
    assert reached >= 10


def test_added_movies_are_excluded_found_searched_and_kept_apart_from_the_rating_model(rec):
    b = rec.bundle
    m = _top_movie(rec)
    _twin(rec, m)
    user = next(int(u) for u in b.user_ids if 10**6 in [r.movie_id for r in rec.recommend(int(u), 10)])
    assert 10**6 not in [r.movie_id for r in rec.recommend(user, 10, also_exclude=[10**6])]
    assert rec.has_movie(10**6) and not rec.has_movie(10**6 + 1)
    assert [r.movie_id for r in rec.search("zyzzyva")] == [10**6]
    similar = rec.similar_movies(10**6, 5)
    assert 10**6 not in [r.movie_id for r in similar] and len(similar) == 5
    assert 10**6 in [r.movie_id for r in rec.similar_movies(int(b.item_ids[m]), 5)]
    with pytest.raises(RecommenderError, match="added after training"):
        rec.predict_rating(user, 10**6)
    # a history of the new movie alone: its features make the query, its stand-in folds into the sources
    from_history = rec.recommend_for_history([(10**6, 5.0)], k=10)
    assert 10**6 not in [r.movie_id for r in from_history] and len(from_history) == 10
    with pytest.raises(UnknownMovieError):
        rec.recommend(user, 10, also_exclude=[10**6 + 1])


def test_a_batch_with_a_movie_it_cannot_add_adds_none(rec):
    b = rec.bundle
    good = NewMovie(10**6, "A New Film (2027)", ("Drama",))
    for bad, message in [(NewMovie(int(b.item_ids[0]), "Taken", ("Drama",)), "already in the catalogue"),
                         (NewMovie(10**6, "Twice", ()), "already in the catalogue"),
                         (NewMovie(-1, "Negative", ()), "out of range"),
                         (NewMovie(10**6 + 1, " (2027)", ()), "title is empty")]:
        with pytest.raises(RecommenderError, match=message):
            rec.add_movies([good, bad])
        assert not rec.has_movie(10**6)
    added = rec.add_movies([good])
    assert (added[0].title, added[0].year, added[0].genres) == ("A New Film", 2027, ["Drama"])
    with pytest.raises(RecommenderError, match="already in the catalogue"):
        rec.add_movie(10**6, "Again", ["Drama"])


def test_a_model_without_an_item_tower_cannot_add_movies(rec):
    rec.bundle.item_tower = None  # as a LightGCN model's bundle loads
    with pytest.raises(RecommenderError, match="cannot place a new movie"):
        rec.add_movie(10**6, "A New Film", ["Drama"])


def test_a_stand_in_is_the_nearest_known_movie_by_features_the_user_has_not_rated():
    """Three known movies on a circle; the added one is nearest 2, then 1, then 0."""
    angles = np.array([0.0, 1.0, 2.0])
    catalogue = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    added = AddedMovies(catalogue)
    index = added.add(NewMovie(7, "New", ()), np.array([np.cos(2.2), np.sin(2.2)], np.float32))
    assert index == 3 and added.index_of(7) == 3 and added.nearest(3)[0] == 2
    assert added.stand_ins(np.array([0, 3]), np.array([], np.int64)).tolist() == [0, 2]
    assert added.stand_ins(np.array([3]), np.array([2])).tolist() == [1]
    assert added.stand_ins(np.array([3]), np.array([0, 1, 2])).tolist() == [2]  # all rated: the nearest
    # retrieval: the stand-in's trained score, moved by how much more the query likes the new features
    trained, query = np.eye(3, 2, dtype=np.float32), np.array([0.0, 1.0], np.float32)
    expected = trained[2] @ query + added.vectors[0] @ query - catalogue[2] @ query
    assert added.retrieval(query, np.array([3]), np.array([2]), trained)[0] == pytest.approx(expected)
    assert len(added._neighbours[0]) == min(NEIGHBOURS, 3)


def test_adding_many_movies_one_at_a_time_keeps_every_vector(rng):
    catalogue = rng.normal(size=(50, 4)).astype(np.float32)
    added = AddedMovies(catalogue)
    vectors = rng.normal(size=(40, 4)).astype(np.float32)
    for j, v in enumerate(vectors):
        added.add(NewMovie(1000 + j, f"m{j}", ()), v)
    np.testing.assert_array_equal(added.vectors, vectors)
    assert [added.movie(50 + j).movie_id for j in range(40)] == list(range(1000, 1040))
    np.testing.assert_array_equal(added.top(vectors[5], 1, np.array([], np.int64)),
                                  [50 + int(np.argmax(vectors @ vectors[5]))])


def test_the_cli_adds_a_movies_csv_before_answering(tiny_bundle, tmp_path, capsys):
    """movierec --new-movies: a MovieLens movies.csv (quoted title with a comma, "(no genres listed)", a
    year column) whose movies the command then knows."""
    from movierec import cli

    bundle = tmp_path / "model.zip"
    bundle.write_bytes(tiny_bundle)
    rec = Recommender.from_bytes(tiny_bundle)
    m = int(rec.bundle.item_ids[0])
    (tmp_path / "new.csv").write_text('movieId,title,genres,year\n'
                                      '900001,"Return, The (2027)",Sci-Fi|Action,\n'
                                      '900002,Untitled,(no genres listed),2028\n')
    assert cli.main(["--model", str(bundle), "--new-movies", str(tmp_path / "new.csv"), "similar", "--movie", "900001",
                     "-k", "3", "--json"]) == 0
    out = capsys.readouterr()
    assert "2 new movies added" in out.err and len(json.loads(out.out)) == 3
    assert cli.main(["--model", str(bundle), "--new-movies", str(tmp_path / "new.csv"), "predict", "--user",
                     str(int(rec.bundle.user_ids[0])), "--movie", "900002"]) == 2
    assert "added after training" in capsys.readouterr().err
    found = read_new_movies(tmp_path / "new.csv")
    assert found == [NewMovie(900001, "Return, The (2027)", ("Sci-Fi", "Action"), 0),
                     NewMovie(900002, "Untitled", (), 2028)]
    assert cli.main(["--model", str(bundle), "similar", "--movie", str(m), "-k", "2"]) == 0  # without: none added
    assert "added" not in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("", "empty; expected a header line"),
    ("id,title\n1,A\n", "line 1: the header 'id,title' lacks movieId"),
    ("movieId,title,genres\n900001,A,Drama\n900002,B\n", "line 3: 2 fields, the header has 3"),
    ("movieId,title\n900001,A\nx,B\n", "line 3: movieId 'x'"),
    ("movieId,title,year\n900001,A,soon\n", "line 2: movieId '900001' and year 'soon' must be whole numbers"),
    ("movieId,title\n900001,A\n\n900001,B\n", "line 4: movie 900001 again (first on line 2)"),
    (b"movieId,title\n900001,Caf\xe9\n", "cannot be read as a CSV file of UTF-8 text"),
])
def test_a_bad_new_movies_file_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "new.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RecommenderError, match=re.escape(message)):
        read_new_movies(path)


def test_the_api_adds_a_movie_with_a_backend_key_only_and_then_recommends_it(tiny_bundle, tmp_path):
    """POST /movies: 401 without a key, 403 with a key scoped to users, 201 with a backend key, then the
    movie is in recommendations, similar lists and search; the same id again is 409, bad fields 422."""
    from conftest import InProcessAPI, call

    from movierec.serving.access import Access, KeyFile, parse_users
    from movierec.serving.api import create_app

    keys = KeyFile(tmp_path / "keys.json")
    _, backend = keys.add(backend=True)
    _, scoped = keys.add(users=parse_users("1-10"))
    rec = Recommender.from_bytes(tiny_bundle)
    api = InProcessAPI(create_app(rec, access=Access(keys.path)))
    m = _top_movie(Recommender.from_bytes(tiny_bundle))
    b = rec.bundle
    body = {"movie_id": 10**6, "title": f"{b.titles[m]} Zyzzyva ({b.years[m]})", "genres": b.genres[m]}
    assert call(api, "POST", "/movies", body)[0] == 401
    status, answer = call(api, "POST", "/movies", body, key=scoped)
    assert status == 403 and "backend key" in answer["error"]
    assert not rec.has_movie(10**6)
    status, answer = call(api, "POST", "/movies", body, key=backend)
    assert status == 201, answer
    assert answer["year"] == int(b.years[m]) and answer["nearest"]["movie_id"] == int(b.item_ids[m])
    user = next(int(u) for u in b.user_ids if 10**6 in [r.movie_id for r in rec.recommend(int(u), 10)])
    listed = call(api, "GET", f"/users/{user}/recommendations?k=10")[1]["recommendations"]
    assert 10**6 in [r["movie_id"] for r in listed]
    assert next(r for r in listed if r["movie_id"] == 10**6)["predicted_rating"] is None
    assert call(api, "GET", "/movies?query=zyzzyva")[1][0]["movie_id"] == 10**6
    assert call(api, "GET", "/movies/1000000/similar?k=3")[0] == 200
    status, answer = call(api, "POST", "/movies", body, key=backend)
    assert status == 409 and "already in the catalogue" in answer["error"]
    for bad in ({**body, "movie_id": 10**6 + 1, "title": ""}, {**body, "movie_id": 10**6 + 1, "genres": "Drama"},
                {**body, "movie_id": 10**6 + 1, "year": 1e4}):
        assert call(api, "POST", "/movies", bad, key=backend)[0] == 422
    assert not rec.has_movie(10**6 + 1)
