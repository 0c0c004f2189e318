"""Movies nobody has rated: the coldstart protocol's rows (movierec.training.evaluation) and the
two-tower's features-alone vectors."""

from types import SimpleNamespace

import numpy as np
import pytest

from movierec.data.split import split_ratings


@pytest.fixture(scope="module")
def cold_split(small_encoded):
    from movierec.data.split import DataSplit

    enc = small_encoded
    return DataSplit(enc, split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "coldstart", 0.2, seed=1))


def test_content_profiles_are_summed_tf_idf_cosines_to_the_rated_movies():
    """Three movies by hand: genres {1}, {1, 2}, {2}; title word 1 in the last two; year buckets 1, 1, 2.
    Each feature in two of three movies weighs log(4/3) = a, year 2 (in one) log(2) = b."""
    from movierec.training.evaluation import content_profiles

    enc = SimpleNamespace(
        item_features={"genres": np.array([[1, 0], [1, 2], [2, 0]]), "title": np.array([[0], [1], [1]]),
                       "year": np.array([[1], [1], [2]])},
        vocab_sizes={"genres": 3, "title": 2, "year": 3}, n_items=3, n_users=2)
    # user 0 rated movie 0, user 1 movie 2
    rated, items = content_profiles(enc, np.array([0, 1, 2]), np.array([0, 2]))
    scores = (rated @ items @ items.T).toarray()
    a, b = np.log(4 / 3), np.log(2)
    # movie 0 = (g1, y1) / sqrt(2); movie 1 = (g1, g2, t1, y1) / 2; movie 2 = (a g2 + a t1 + b y2) / norm
    np.testing.assert_allclose(scores[0], [1.0, 1 / np.sqrt(2), 0.0], rtol=1e-5)
    np.testing.assert_allclose(scores[1], [0.0, a / np.sqrt(2 * a * a + b * b), 1.0], rtol=1e-5)


def test_a_cold_row_ranks_only_the_held_out_movies(cold_split):
    """A scorer that knows each user's held-out movies gets NDCG@10 1, one that puts them last 0; the
    split's cold movies are exactly those without a training rating; other splits have none."""
    from movierec.training.evaluation import Evaluator

    enc, split = cold_split.enc, cold_split.split
    ev = Evaluator(enc, split)
    assert np.array_equal(ev.cold, np.unique(enc.item_idx[split.test]))
    assert not np.isin(ev.cold, enc.item_idx[split.train]).any()
    relevant = np.zeros((enc.n_users, len(ev.cold)), np.float32)
    relevant[enc.user_idx[split.test], np.searchsorted(ev.cold, enc.item_idx[split.test])] = 1.0
    assert ev.cold_row("oracle", lambda us: relevant[us])["ndcg@10"] == pytest.approx(1.0)
    ev.users = ev.users[relevant[ev.users].sum(1) <= len(ev.cold) - 10]  # ten wrong ones to put first
    assert len(ev.users) > 100
    assert ev.cold_row("anti", lambda us: -relevant[us])["ndcg@10"] == 0.0
    warm = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=1)
    assert len(Evaluator(enc, warm).cold) == 0


def test_the_two_tower_and_the_content_baseline_rank_cold_movies_lightgcn_cannot(cold_split):
    import torch

    from movierec.core.settings import RetrievalConfig
    from movierec.models.layers import feature_tensors
    from movierec.models.torch_runtime import state_to_bytes
    from movierec.models.two_tower import TwoTower
    from movierec.training.evaluation import Evaluator
    from movierec.training.retrieval import RetrievalResult

    enc = cold_split.enc
    torch.manual_seed(0)
    cfg = RetrievalConfig(dim=8, hidden=16)
    towers = TwoTower(enc.vocab_sizes, *feature_tensors(enc), cfg.dim, cfg.hidden)
    ev = Evaluator(enc, cold_split.split)
    retrieval = RetrievalResult(state_to_bytes(towers), cfg, enc.vocab_sizes)
    rows = ev.cold_rows(retrieval, retrieval.embeddings()[0])
    assert [r["model"] for r in rows] == ["two-tower (features alone)", "content kNN baseline"]
    assert all(0 < r["ndcg@10"] <= 1 for r in rows)
    graph = RetrievalResult(b"", RetrievalConfig(model="lightgcn"), enc.vocab_sizes)
    assert [r["model"] for r in ev.cold_rows(graph, retrieval.embeddings()[0])] == ["content kNN baseline"]


def test_content_vectors_do_not_read_the_id_embedding(small_encoded):
    """A movie nobody rated has an id embedding that never trained: its vector must not depend on it."""
    import torch

    from movierec.models.layers import feature_tensors
    from movierec.models.two_tower import TwoTower

    towers = TwoTower(small_encoded.vocab_sizes, *feature_tensors(small_encoded), 8, 16).eval()
    items = torch.arange(10)
    with torch.no_grad():
        before, with_ids = towers.content_vectors(items), towers.item_vectors(items)
        towers.item.id.weight.add_(1.0)
        torch.testing.assert_close(towers.content_vectors(items), before)
        assert not torch.allclose(towers.item_vectors(items), with_ids)


def test_the_report_its_text_and_its_card_carry_the_cold_rows(tiny_models, cold_split):
    """What the evaluate step shows under the coldstart protocol (the models' own split does not matter here)."""
    from movierec.reports.cards import evaluation_card
    from movierec.training.evaluation import Evaluator

    _, stages = tiny_models
    report = Evaluator(cold_split.enc, cold_split.split).run(stages)
    assert [r["model"] for r in report.cold] == ["two-tower (features alone)", "content kNN baseline"]
    assert report.cold_items == len(np.unique(cold_split.enc.item_idx[cold_split.split.test]))
    assert f"movies nobody rated in training ({report.cold_items})" in report.to_text()
    rendered = "".join(str(c.render()) for c in evaluation_card(report, "coldstart"))
    assert "Movies nobody rated in training" in rendered and "content kNN baseline" in rendered


def test_a_served_model_places_a_movie_by_its_features_as_torch_does(tiny_models, tiny_bundle):
    """Recommender.movie_vector, numpy alone from item_tower.npz, gives a catalogue movie's title, genres and
    year the vector TwoTower.content_vectors gives it; what the catalogue never had counts as unknown, and a
    year after its last falls into the last bucket."""
    import torch

    from movierec.serving.recommender import Recommender

    data_split, stages = tiny_models
    enc, rec = data_split.enc, Recommender.from_bytes(tiny_bundle)
    movies = np.arange(0, enc.n_items, 7)
    with torch.no_grad():
        expected = stages.retrieval.model().content_vectors(torch.as_tensor(movies)).numpy()
    served = np.stack([rec.movie_vector(enc.titles[m], enc.genres[m], int(enc.years[m])) for m in movies])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    m = int(np.argmax(enc.years))
    same = rec.movie_vector(enc.titles[m], enc.genres[m], int(enc.years[m]))
    np.testing.assert_allclose(rec.movie_vector(enc.titles[m] + " Zyzzyva", [*enc.genres[m], "Not A Genre"],
                                                int(enc.years[m]) + 40), same, atol=1e-6)
    assert not np.allclose(rec.movie_vector(enc.titles[m], enc.genres[m], 0), same)  # the year is read


def test_a_model_without_movie_features_says_it_cannot_place_a_new_movie(tiny_bundle):
    from movierec.errors import RecommenderError
    from movierec.serving.recommender import Recommender

    rec = Recommender.from_bytes(tiny_bundle)
    rec.bundle.item_tower = None  # as a LightGCN model's bundle loads: it has no item_tower.npz
    with pytest.raises(RecommenderError, match="cannot place a new movie"):
        rec.movie_vector("A New Movie (2030)", ["Drama"], 2030)


def test_a_title_year_is_read_as_the_readers_read_it_and_genres_must_be_a_list(tiny_models, tiny_bundle):
    from movierec.errors import RecommenderError
    from movierec.serving.recommender import Recommender

    enc, rec = tiny_models[0].enc, Recommender.from_bytes(tiny_bundle)
    m = int(np.argmax(enc.years))
    np.testing.assert_allclose(rec.movie_vector(f"{enc.titles[m]} ({enc.years[m]})", enc.genres[m]),
                               rec.movie_vector(enc.titles[m], enc.genres[m], int(enc.years[m])), atol=1e-6)
    with pytest.raises(RecommenderError, match="list of genre names"):
        rec.movie_vector(enc.titles[m], "Drama")


def test_a_catalogue_without_years_puts_every_new_movies_year_in_the_unknown_bucket():
    """Its year table has one row (unknown): a new movie's year must not index past it."""
    from movierec.core.movie_features import MovieVocabulary

    movies = MovieVocabulary.of(["item 1", "item 2"], [[], []], np.zeros(2, np.int32))
    assert movies.sizes["year"] == 1
    assert movies.features(["A New Movie"], [["Drama"]], np.array([2030]))["year"].tolist() == [[0]]


def test_ratings_sent_of_a_held_out_movie_stay_out_of_training():
    """Under coldstart a rating users sent of a held-out movie, by anyone, would make it a rated movie."""
    from movierec.data.split import join_training

    u, i, t = np.repeat(np.arange(20), 10), np.tile(np.arange(10), 20), np.arange(200)
    split = split_ratings(u, i, t, "coldstart", 0.2, seed=0)
    cold = np.unique(i[split.test])
    # a user the data does not have, so no sent pair is a test pair: only the movie keeps two of them out
    sent_u, sent_i = np.array([20, 20, 20]), np.array([cold[0], cold[1], np.setdiff1d(np.arange(10), cold)[0]])
    joined = join_training(split, np.concatenate([u, sent_u]), np.concatenate([i, sent_i]),
                           np.concatenate([t, [500, 501, 502]]), len(u))
    items = np.concatenate([i, sent_i])
    assert not np.isin(items[joined.train], cold).any()
    assert (joined.feedback_left_out, joined.feedback_train) == (2, 1)
    assert np.array_equal(joined.test, split.test)


def test_lightgcn_has_no_item_tower_to_export(small_encoded):
    import torch

    from movierec.models.lightgcn import EmbeddingTables
    from movierec.training.export import item_tower_tables

    tables = EmbeddingTables(torch.zeros(small_encoded.n_users, 4), torch.zeros(small_encoded.n_items, 4))
    assert item_tower_tables(tables, small_encoded.item_features) is None
