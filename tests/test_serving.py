"""The Recommender API over a real bundle: ids in, titled and scored recommendations out."""

import numpy as np
import pytest

from movierec import Recommender
from movierec.publish import read_bundle_metadata
from movierec.serving import BundleNotFoundError, RecommenderError, UnknownMovieError, UnknownUserError


@pytest.fixture(scope="module")
def rec(tiny_bundle):
    return Recommender.from_bytes(tiny_bundle)


def test_recommend_excludes_rated_and_is_sorted(rec):
    user = int(rec.user_ids[0])
    recs = rec.recommend(user, k=10)
    assert len(recs) == 10
    ids = [r.movie_id for r in recs]
    assert len(set(ids)) == 10
    assert not set(ids) & set(rec.rated(user))
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert all(r.title and 0.5 <= r.predicted_rating <= 5 for r in recs)
    with_rated = rec.recommend(user, k=50, exclude_rated=False)
    assert set(r.movie_id for r in with_rated) & set(rec.rated(user))


def test_scores_agree_with_the_models(rec):
    user = int(rec.user_ids[3])
    top = rec.recommend(user, k=3)[0]
    assert top.predicted_rating == pytest.approx(rec.predict_rating(user, top.movie_id), abs=1e-5)
    u, m = int(np.searchsorted(rec.user_ids, user)), int(np.searchsorted(rec.item_ids, top.movie_id))
    logit = rec.user_vectors[u] @ rec.item_vectors[m] / rec.temperature
    assert top.score == pytest.approx(logit + np.log(top.predicted_rating), rel=1e-4)


def test_history_for_unknown_user(rec):
    liked = [int(rec.item_ids[i]) for i in (0, 1, 2)]
    recs = rec.recommend_for_history([(liked[0], 5), (liked[1], 4.5), (liked[2], 1)], k=5)
    assert len(recs) == 5 and not {r.movie_id for r in recs} & set(liked)
    assert rec.recommend_for_history(liked, k=2)  # bare ids count as liked
    with pytest.raises(RecommenderError, match="above 2.5"):
        rec.recommend_for_history([(liked[0], 1)])
    with pytest.raises(RecommenderError, match="empty"):
        rec.recommend_for_history([])


def test_similar_movies_leave_the_movie_out(rec):
    movie = int(rec.item_ids[5])
    sims = rec.similar_movies(movie, k=5)
    assert len(sims) == 5 and movie not in [s.movie_id for s in sims]
    assert [s.score for s in sims] == sorted([s.score for s in sims], reverse=True)


def test_clear_errors(rec):
    with pytest.raises(UnknownUserError, match="unknown user id 99999"):
        rec.recommend(99999)
    with pytest.raises(UnknownMovieError, match="unknown movie id 123456"):
        rec.similar_movies(123456)
    with pytest.raises(RecommenderError, match="k must be"):
        rec.recommend(int(rec.user_ids[0]), k=0)


def test_load_from_folder_and_zip(tmp_path, tiny_bundle):
    (tmp_path / "b.zip").write_bytes(tiny_bundle)
    assert Recommender.load(tmp_path / "b.zip").info["run_id"] == "test"
    import zipfile

    zipfile.ZipFile(tmp_path / "b.zip").extractall(tmp_path / "dir")
    assert Recommender.load(tmp_path / "dir").info == read_bundle_metadata(tiny_bundle)
    with pytest.raises(BundleNotFoundError, match="missing"):
        Recommender.load(tmp_path)  # a folder that is not a bundle
    with pytest.raises(BundleNotFoundError):
        Recommender.load()  # a source checkout packages no model


def test_title_search(rec):
    hits = rec.search(rec.titles[7])
    assert int(rec.item_ids[7]) in [h.movie_id for h in hits]
