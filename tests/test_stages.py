"""The candidate sources and the learned second stage: EASE and ALS by hand, the union of candidate
lists, the features, and the listwise fit finding the weights that order relevant movies first."""

import numpy as np
import pytest

from movierec.core.arrays import Interactions
from movierec.core.settings import SourcesConfig
from movierec.models import second_stage, sources

FEATURES = second_stage.features(("ease", "als"), rated=True)  # as the flow's ranker has them by default


def test_ease_weights_are_the_closed_form_by_hand():
    # 3 users x 3 movies; P = (XᵀX + λI)⁻¹, B = I - P / diag(P) with a zero diagonal
    x = sources.interactions(Interactions(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 0]), 3, 3))
    lam = 1.0
    gram = np.array([[2, 1, 0], [1, 2, 1], [0, 1, 1]], float) + lam * np.eye(3)
    p = np.linalg.inv(gram)
    expected = -p / np.diag(p)
    np.fill_diagonal(expected, 0)
    model = sources.fit_ease(x, lam, max_items=10)
    np.testing.assert_allclose(model.weights, expected, rtol=1e-5)
    np.testing.assert_allclose(model.scores(np.array([0]), x[[0]]), (np.array([[1, 1, 0]]) @ expected), rtol=1e-5)


def test_ease_covers_only_the_most_rated_movies_and_scores_the_rest_zero():
    x = sources.interactions(Interactions(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 1, 3]), 3, 4))
    model = sources.fit_ease(x, 1.0, max_items=2)
    assert model.items.tolist() == [0, 1]  # movie 1 rated 3 times; ties to the lower id
    scores = model.scores(np.arange(3), x)
    assert (scores[:, [2, 3]] == 0).all() and scores.shape == (3, 4)


def test_als_fold_in_is_the_user_step_of_implicit():
    """A user's factors from their history equal what the implicit library's own user step
    (``recalculate_user``) gives them, for an alpha that is not 1 (it scales the confidence)."""
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    x = sources.interactions(Interactions(rng.integers(0, 40, 600), rng.integers(0, 30, 600), 40, 30))
    als = AlternatingLeastSquares(factors=4, regularization=0.1, alpha=2.0, iterations=10, random_state=0)
    als.fit(x, show_progress=False)
    model = sources.Als(np.asarray(als.user_factors), np.asarray(als.item_factors), 0.1, 2.0)
    expected = np.asarray(als.recalculate_user(7, x[[7]])).ravel()
    np.testing.assert_allclose(model.user_vector(x[[7]].indices), expected, rtol=1e-3, atol=1e-4)
    assert np.abs(expected).max() > 0.01  # a real vector, not two zeros agreeing


def test_sources_are_chosen_on_validation_and_refitted_on_everything(small_encoded):
    enc = small_encoded
    n = len(enc.user_idx)
    fit, val = np.arange(n - 600), np.arange(n - 600, n)
    config = SourcesConfig(ease_lambdas=(1.0, 50.0), als_factors=(4,), als_regularization=(0.1,), als_alpha=(1.0,),
                           als_iterations=3)
    models = sources.fit_sources(Interactions.of(enc, fit), Interactions.of(enc, val), config, seed=0)
    assert models.chosen["ease"]["params"]["lambda"] in (1.0, 50.0) and 0 <= models.chosen["ease"]["val_ndcg"] <= 1
    lam = models.chosen["ease"]["params"]["lambda"]
    x_all = sources.interactions(Interactions.of(enc))
    np.testing.assert_allclose(models.final["ease"].weights, sources.fit_ease(x_all, lam, 10_000).weights, rtol=1e-5)
    assert not np.allclose(models.tuning["ease"].weights, models.final["ease"].weights)  # the tuning fit lacks val


def test_rp3beta_covers_as_many_movies_as_its_command_line_option_says():
    """`rp3beta_max_items` had no option, unlike `--ease-max-items`: only a configuration file could set it."""
    from movierec.core.settings import BY_KEY, from_values

    option = BY_KEY["sources.rp3beta_max_items"]
    assert option.option == "rp3beta-max-items" and option.problem(0) == "must be at least 1, got 0"
    config = from_values({"sources.rp3beta": True, "sources.rp3beta_max_items": 2}).sources
    x = sources.interactions(Interactions(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 1, 3]), 3, 4))
    model = sources.RP3beta.fit(x, {"alpha": 1.0, "beta": 0.0}, config, seed=0)
    assert model.items.tolist() == [0, 1]  # movie 1 (3 ratings) and the first of the once-rated ones


def test_union_keeps_each_movie_once_and_pads():
    lists = [np.array([[3, 1, 2], [5, -1, -1]]), np.array([[1, 4, 3], [6, 5, 7]])]
    got = second_stage.union(lists)
    assert [sorted(r[r >= 0].tolist()) for r in got] == [[1, 2, 3, 4], [5, 6, 7]]
    assert got.shape == (2, 4) and (got[1, 3:] == -1).all()


def test_candidates_exclude_seen_movies_and_carry_each_feature():
    users = np.array([0, 1])
    retrieval = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    ease = np.array([[0.0, 0.0, 0.0, 0.9, 0.8], [0.9, -0.1, 0.5, 0.0, 0.0]], np.float32)
    seen = (np.array([0, 1, 2]), np.array([0, 4]))  # user 0 rated movie 0, user 1 movie 4
    cands = second_stage.candidates(users, {"retrieval": retrieval, "ease": ease}, seen,
                              ratings=lambda u, i: np.full(len(u), 4.0), popularity=np.array([9, 0, 0, 0, 3]), n=2)
    assert [sorted(r[r >= 0].tolist()) for r in cands.items] == [[1, 2, 3, 4], [0, 2, 3]]
    row0 = {int(i): v for i, v in zip(cands.items[0], cands.values[0]) if i >= 0}
    assert cands.features == ("retrieval", "ease", "rating", "popularity")  # the sources scored, no zero column
    np.testing.assert_allclose(row0[3], [2.0, 0.9, np.log(4.0), 0.0], rtol=1e-6)
    np.testing.assert_allclose(row0[4], [1.0, 0.8, np.log(4.0), np.log1p(3)], rtol=1e-6)


def test_without_a_rating_model_candidates_carry_every_feature_but_the_rating():
    users = np.array([0])
    retrieval, als = np.array([[3.0, 2.0, 1.0]], np.float32), np.array([[0.1, 0.2, 0.7]], np.float32)
    cands = second_stage.candidates(users, {"retrieval": retrieval, "als": als}, (np.array([0, 0]), np.array([], int)),
                              ratings=None, popularity=np.array([4, 0, 1]), n=1)
    assert cands.features == ("retrieval", "als", "popularity")
    assert sorted(cands.items[0].tolist()) == [0, 2]
    by_movie = {int(i): v.tolist() for i, v in zip(cands.items[0], cands.values[0])}
    np.testing.assert_allclose(by_movie[0], [3.0, 0.1, np.log1p(4)], rtol=1e-6)
    np.testing.assert_allclose(by_movie[2], [1.0, 0.7, np.log1p(1)], rtol=1e-6)


def test_evaluating_implicit_only_data_reports_no_rating_error(tiny_implicit_models):
    """No rating model: no RMSE/MAE in any row, no global-mean row (it only predicts ratings), and
    the report says why; the ranking metrics are all there."""
    from movierec.training.evaluation import Evaluator

    data_split, stages = tiny_implicit_models
    report = Evaluator(data_split.enc, data_split.split).run(stages)
    assert report.implicit
    assert all(row["rmse"] is None and row["mae"] is None for row in report.rows)
    assert "global-mean baseline" not in [row["model"] for row in report.rows]
    assert all(0 <= row["ndcg@10"] <= 1 for row in report.rows)


def test_the_evaluate_card_shows_every_metric_in_one_format():
    """The card wrote 0.004508 beside 1.035 (four significant digits); the terminal four decimals."""
    from movierec.reports.cards import evaluation_card
    from movierec.training.evaluation import Report

    row = {"model": "two-stage (exact retrieval)", "top1": 0.004508, "top5": 0.02, "top10": 0.1, "top50": 0.25,
           "top100": 0.5, "rmse": 1.035, "mae": 0.8123456, "ndcg@10": 0.45, "p@10": None, "r@10": 0.123456}
    report = Report(rows=[row], recall={"EASEᴿ source top 20": 0.5123456})
    cards = [c.render() for c in evaluation_card(report, "tfrs")]
    (metrics,) = [c for c in cards if c["type"] == "table" and "top1" in c["columns"]]
    cells = dict(zip(metrics["columns"], metrics["data"][0]))
    assert (cells["top1"], cells["rmse"], cells["mae"], cells["top10"], cells["p@10"]) == (
        "0.0045", "1.0350", "0.8123", "0.1000", "—")
    assert report.to_text().splitlines()[1].split("  ")[1:3] == ["0.0045", "0.0200"]
    (recall,) = [c for c in cards if c["type"] == "table" and c["columns"] == ["name", "value"]]
    assert recall["data"] == [["EASEᴿ source top 20", "0.5123"]]


def test_the_listwise_fit_finds_the_feature_that_orders_relevant_movies_first():
    """Feature 1 (EASE) marks the relevant movies, the others are noise: the fitted weights
    order by EASE, and their nDCG@10 is the perfect one."""
    rng = np.random.default_rng(0)
    users, width = 50, 30
    relevant = np.zeros((users, width), bool)
    relevant[:, :3] = True
    values = rng.normal(size=(users, width, len(FEATURES))).astype(np.float32)
    values[..., 1] = relevant + rng.normal(scale=0.1, size=(users, width))
    data = second_stage._Validation(values, np.zeros((users, width), bool), relevant, np.full(users, 3))
    weights = second_stage.fit_listwise(data, np.arange(users), l2=0.01)
    assert data.ndcg(weights, np.arange(users)) == pytest.approx(1.0)
    assert np.argmax(np.abs(weights)) == 1
    assert data.ndcg(np.eye(len(FEATURES))[0], np.arange(users)) < 0.5


def test_the_listwise_fit_solves_a_two_candidate_list_by_hand_and_ignores_padding():
    """One user, one feature, candidates x = +1 (relevant) and -1, a third slot padded with a
    huge value: the loss is -log σ(2w) + λw², so the optimum solves 2(1 - σ(2w)) = 2λw; at
    λ = 0.5 that is w ≈ 0.6590 (bisection below). A padded slot that counted would move it."""
    values = np.array([[[1.0], [-1.0], [50.0]]], np.float32)
    data = second_stage._Validation(values, np.array([[False, False, True]]), np.array([[True, False, False]]),
                              np.array([1]))
    low, high = 0.0, 2.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 1 - 1 / (1 + np.exp(-2 * mid)) > 0.5 * mid else (low, mid)
    np.testing.assert_allclose(second_stage.fit_listwise(data, np.array([0]), l2=0.5), [low], atol=1e-5)


def test_the_ranker_scores_standardised_features():
    r = second_stage.Ranker(FEATURES, np.array([1, 0, 0, 0, 0], np.float32), np.array([2, 1, 1, 1, 1], np.float32),
                      np.array([1, 1, 0, 0, 0], np.float32), candidates=10, val_ndcg=0.0)
    values = np.array([[[3.0, 0.5, 9, 9, 9], [1.0, 2.0, 9, 9, 9]]], np.float32)
    np.testing.assert_allclose(r.score(values), [[1.5, 2.0]])
    cands = second_stage.Candidates(np.array([[7, 8]]), values, {}, r.features)
    assert second_stage.top(r, cands, 1).tolist() == [[8]]


def test_the_ranker_refuses_candidates_of_other_features_of_the_same_width():
    """Weights go by position: candidates from RP3beta where the ranker had ALS were scored silently."""
    r = second_stage.Ranker(FEATURES, np.zeros(5, np.float32), np.ones(5, np.float32), np.ones(5, np.float32),
                            candidates=10, val_ndcg=0.0)
    other = second_stage.features(("ease", "rp3beta"), rated=True)
    assert len(other) == len(FEATURES) and other != FEATURES
    cands = second_stage.Candidates(np.array([[7, 8]]), np.zeros((1, 2, 5), np.float32), {}, other)
    with pytest.raises(ValueError, match=r"candidates carry the features \[.*'rp3beta'.*\], but the ranker was "
                                         r"fitted on \[.*'als'.*\]"):
        second_stage.top(r, cands, 1)


def test_on_many_users_the_grids_are_searched_on_a_sample_and_lambda_scaled(small_encoded):
    enc = small_encoded
    n = len(enc.user_idx)
    fit, val = np.arange(n - 600), np.arange(n - 600, n)
    config = SourcesConfig(ease_lambdas=(10.0,), als=False, search_users=40)
    models = sources.fit_sources(Interactions.of(enc, fit), Interactions.of(enc, val), config, seed=0)
    users_with_fit = len(np.unique(enc.user_idx[fit]))
    assert models.chosen["ease"]["params"]["lambda"] == pytest.approx(10.0 * users_with_fit / 40)
    x_fit = sources.interactions(Interactions.of(enc, fit))
    np.testing.assert_allclose(models.tuning["ease"].weights,
                               sources.fit_ease(x_fit, 10.0 * users_with_fit / 40, 10_000).weights, rtol=1e-5)


def test_few_validation_users_still_cap_the_search_by_the_users_in_the_fit_data(small_encoded):
    """The validation pairs are capped (5,000), so their users never exceed the search cap: the
    cap must count the users the grid would be fitted on, or at ML-20M size every grid fit used
    every rating. Here 10 validation users among ~200: the search takes 40 users, λ scaled."""
    enc = small_encoded
    val_users = np.unique(enc.user_idx)[:10]
    val = np.flatnonzero(np.isin(enc.user_idx, val_users))[::3]
    fit = np.setdiff1d(np.arange(len(enc.user_idx)), val)
    config = SourcesConfig(ease_lambdas=(10.0,), als=False, search_users=40)
    models = sources.fit_sources(Interactions.of(enc, fit), Interactions.of(enc, val), config, seed=0)
    users_with_fit = len(np.unique(enc.user_idx[fit]))
    assert users_with_fit > 100
    assert models.chosen["ease"]["params"]["lambda"] == pytest.approx(10.0 * users_with_fit / 40)


def test_candidates_of_chunks_concatenate_to_the_candidates_of_all_users():
    """train_ranker scores a chunk of users at a time ([users, movies] arrays of every source at
    once would need gigabytes at ML-20M size): the chunks must add up to the one-shot result."""
    rng = np.random.default_rng(0)
    users = np.arange(6)
    scores = {"retrieval": rng.normal(size=(6, 12)).astype(np.float32),
              "ease": rng.normal(size=(6, 12)).astype(np.float32)}
    scores["ease"][:2] = scores["retrieval"][:2]  # the first chunk's sources agree: a narrower union
    seen = (np.arange(0, 13, 2), rng.integers(0, 12, 12))
    rate = lambda u, i: np.full(len(u), 3.0)  # noqa: E731
    popularity = rng.integers(0, 9, 12)
    whole = second_stage.candidates(users, scores, seen, ratings=rate, popularity=popularity, n=3)
    parts = [second_stage.candidates(users[s], {k: v[s] for k, v in scores.items()}, seen, ratings=rate,
                               popularity=popularity, n=3)
             for s in (slice(0, 2), slice(2, 6))]
    joined = second_stage.concat(parts)
    assert parts[0].items.shape[1] < parts[1].items.shape[1] and (joined.items[:2, -1] == -1).all()
    for row in range(6):
        mine, theirs = whole.items[row] >= 0, joined.items[row] >= 0
        assert sorted(whole.items[row][mine]) == sorted(joined.items[row][theirs])
        order_a, order_b = np.argsort(whole.items[row][mine]), np.argsort(joined.items[row][theirs])
        np.testing.assert_allclose(whole.values[row][mine][order_a], joined.values[row][theirs][order_b])
    assert all(np.array_equal(whole.lists[k], joined.lists[k]) for k in whole.lists)


def test_ranker_search_tries_every_penalty_in_this_process_and_keeps_the_best(tiny_models):
    """train_ranker's grid runs in the step's process (Ray and Tune took 15-20 s to start around five
    sub-second fits): every penalty of L2 is tried, the best held-out nDCG@10 wins with ties going to
    the stronger penalty, and no Ray instance is started."""
    import ray

    from movierec import pipeline
    from movierec.core.settings import RankerConfig, Settings

    data_split, stages = tiny_models
    ranker = pipeline.train_ranker(data_split, stages, Settings(ranker=RankerConfig(candidates=20)))
    assert not ray.is_initialized()
    assert sorted(t["l2"] for t in ranker.trials) == sorted(second_stage.L2)
    best = max(ranker.trials, key=lambda t: (t["val_ndcg"], t["l2"]))
    assert ranker.trials[0] == best and ranker.val_ndcg == best["val_ndcg"]
    assert ranker.features == stages.ranker.features and np.isfinite(ranker.weights).all()
