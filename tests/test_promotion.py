"""The promotion gate (movierec.training.promotion): a bundle scored as it serves, and the decision."""

import dataclasses

import numpy as np
import pytest

from movierec.core.settings import PromotionSettings
from movierec.data.split import DataSplit, split_ratings
from movierec.serving.recommender import Recommender
from movierec.training import promotion
from movierec.training.evaluation import Evaluator
from movierec.training.promotion import Scores, decide


def test_a_bundle_scored_as_it_serves_gets_the_figures_evaluate_reports(tiny_models, tiny_bundle):
    """Through Recommender on its bundle the model scores what the flow's evaluate step reports for
    it from the training objects: the same lists, so the same nDCG@10, and the same stars."""
    data_split, stages = tiny_models
    report = Evaluator(data_split.enc, data_split.split).run(stages)
    two_stage = next(row for row in report.rows if row["model"] == "two-stage (exact retrieval)")
    scores = promotion.score(Recommender.from_bytes(tiny_bundle), data_split)
    assert scores.ndcg == pytest.approx(two_stage["ndcg@10"], abs=1e-12) and scores.ndcg > 0.1
    assert scores.rmse == pytest.approx(two_stage["rmse"], abs=1e-6)
    assert scores.rated_pairs == len(data_split.split.test) and scores.seen_test == 0


def test_a_champion_that_trained_on_the_test_ratings_is_counted(tiny_models, tiny_bundle):
    """Scored on another split of the same ratings, the model has trained on some of its test ratings:
    as many as the two splits share, counted by hand."""
    data_split, _ = tiny_models
    enc = data_split.enc
    other = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=99)
    trained = set(zip(enc.user_idx[data_split.split.train], enc.item_idx[data_split.split.train]))
    shared = sum((u, i) in trained for u, i in zip(enc.user_idx[other.test], enc.item_idx[other.test]))
    scores = promotion.score(Recommender.from_bytes(tiny_bundle), DataSplit(enc, other))
    assert shared > 0 and scores.seen_test == shared


def test_a_champion_that_never_saw_the_users_recommends_from_their_ratings(tiny_models, tiny_private_bundle):
    """A bundle without its users (or one trained before they came) ranks for them from the
    training ratings of the split, stars included, as the API does for a new user; it has no user
    to rate for."""
    data_split, _ = tiny_models
    rec = Recommender.from_bytes(tiny_private_bundle)
    assert not rec.knows_user(int(data_split.enc.user_ids[0]))
    scores = promotion.score(rec, data_split)
    assert scores.ndcg > 0.05 and scores.rmse is None and scores.rated_pairs == 0
    # the history each unknown user is recommended from: their training ratings with their stars
    enc, train = data_split.enc, data_split.split.train
    test = promotion.TestSplit(data_split)
    for u in test.users[:5]:
        mine = train[enc.user_idx[train] == u]
        movies, stars = test.trained(int(u))
        assert sorted(zip(movies.tolist(), stars.tolist())) == \
            sorted(zip(enc.item_ids[enc.item_idx[mine]].tolist(), enc.rating[mine].tolist()))


def test_rmse_is_compared_only_over_ratings_both_models_can_make(tiny_models, tiny_bundle, tiny_private_bundle):
    """Against a champion that cannot rate these users, the challenger's RMSE is not compared either
    (else one would be scored on pairs the other was spared), and the decision says so."""
    data_split, _ = tiny_models
    ours, theirs = promotion.compare(Recommender.from_bytes(tiny_bundle), Recommender.from_bytes(tiny_private_bundle),
                                     data_split)
    assert ours.rmse is None and theirs.rmse is None and ours.rated_pairs == theirs.rated_pairs == 0
    assert ours.ndcg == promotion.score(Recommender.from_bytes(tiny_bundle), data_split).ndcg
    decision = decide(ours, theirs, ndcg_tolerance=0.01, rmse_tolerance=0.01)
    assert any(reason.startswith("RMSE not compared") for reason in decision.reasons)
    same = promotion.compare(Recommender.from_bytes(tiny_bundle), Recommender.from_bytes(tiny_bundle), data_split)
    assert same[0] == same[1] and same[0].rated_pairs == len(data_split.split.test)


CHAMPION = Scores(ndcg=0.40, rmse=0.90, rated_pairs=100, seen_test=0)


@pytest.mark.parametrize(("ndcg", "rmse", "promote"), [
    (0.40, 0.90, True),  # the same
    (0.391, 0.909, True),  # worse, within both tolerances
    (0.389, 0.90, False),  # nDCG 0.011 below
    (0.45, 0.911, False),  # RMSE 0.011 above, however good the ranking
    (0.45, None, True),  # no rating model (implicit data): ranking alone decides
])
def test_the_gate_promotes_unless_a_metric_regresses_beyond_its_tolerance(ndcg, rmse, promote):
    decision = decide(Scores(ndcg, rmse, 100, 0), CHAMPION, ndcg_tolerance=0.01, rmse_tolerance=0.01)
    assert decision.promote is promote


def test_a_regression_says_by_how_much_and_an_override_is_recorded():
    worse = Scores(ndcg=0.37, rmse=0.93, rated_pairs=100, seen_test=0)
    refused = decide(worse, CHAMPION, ndcg_tolerance=0.01, rmse_tolerance=0.01)
    assert not refused.promote
    assert refused.reasons == ["nDCG@10 0.3700 is 0.0300 below the champion's 0.4000 (tolerance 0.01)",
                               "RMSE 0.9300 is 0.0300 above the champion's 0.9000 (tolerance 0.01)"]
    forced = decide(worse, CHAMPION, ndcg_tolerance=0.01, rmse_tolerance=0.01, override=True)
    assert forced.promote and forced.reasons[0].startswith("promoted by override despite: nDCG@10 0.3700 is 0.0300")
    assert decide(worse, None, ndcg_tolerance=0.01, rmse_tolerance=0.01).promote
    optimistic = dataclasses.replace(CHAMPION, seen_test=7)
    assert "trained on 7 of these test ratings" in decide(worse, optimistic, ndcg_tolerance=0.01,
                                                           rmse_tolerance=0.01).reasons[-1]


def test_the_rmse_compared_is_the_metric_codes(tiny_models, tiny_bundle):
    """The champion's RMSE is metrics.rmse over the test ratings it can rate, by hand."""
    data_split, _ = tiny_models
    enc, test = data_split.enc, data_split.split.test
    rec = Recommender.from_bytes(tiny_bundle)
    users, movies = enc.user_ids[enc.user_idx[test]], enc.item_ids[enc.item_idx[test]]
    by_hand = np.sqrt(np.mean((np.array(rec.predict_ratings(users.tolist(), movies.tolist())) - enc.rating[test]) ** 2))
    assert promotion.score(rec, data_split).rmse == pytest.approx(by_hand, rel=1e-9)


def test_without_a_champion_the_first_model_is_promoted(tiny_models, tiny_bundle):
    data_split, _ = tiny_models
    result = promotion.gate(data_split, tiny_bundle, None, PromotionSettings())
    assert result.decision.promote and result.champion is None and "first model" in result.decision.reasons[0]
    assert result.to_dict()["challenger"]["ndcg"] == result.challenger.ndcg


def test_a_champion_that_cannot_be_scored_blocks_promotion_unless_overridden(tiny_models, tiny_bundle):
    """A champion nobody can load (a run that does not exist, or whose bundle this code cannot
    read) must not be waved through: the gate refuses and says how to override."""
    data_split, _ = tiny_models
    missing = "RecommenderFlow/no-such-run"
    refused = promotion.gate(data_split, tiny_bundle, missing, PromotionSettings())
    assert not refused.decision.promote and missing in refused.unreadable
    assert "--promote-anyway" in refused.decision.reasons[0]
    forced = promotion.gate(data_split, tiny_bundle, missing, PromotionSettings(override=True))
    assert forced.decision.promote and forced.decision.overridden


def test_the_promotion_settings_take_numbers_from_0_to_1():
    from movierec.core.settings import SETTINGS

    tolerance = next(s for s in SETTINGS if s.key == "promotion.ndcg_tolerance")
    assert tolerance.problem(0) is None and tolerance.problem(0.05) is None
    assert tolerance.problem(1.5) == "must be from 0 to 1, got 1.5"
    assert tolerance.problem("0.1") == 'must be a number, got "0.1"' and tolerance.problem(True) is not None
