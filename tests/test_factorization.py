"""Biased matrix factorisation (ALS-WR) by hand, the closed-form blend weight, and the blend folded
into the rating model: the folded tables, the saved state and the ONNX graph all predict the blend."""

import numpy as np
import pytest
import torch

from movierec.core.arrays import Interactions
from movierec.models import factorization
from movierec.models.layers import feature_tensors
from movierec.models.rating_model import RatingModel, predict
from movierec.models.torch_runtime import state_from_bytes, state_to_bytes
from movierec.serving import rating_tables
from movierec.training import export
from movierec.training.rating_search import RankingResult


def test_one_half_step_is_the_ridge_regression_worked_by_hand():
    """One user rated two movies whose factors are 1 and 2 (biases 0), stars 1 and 2; the design
    is [[1, 1], [2, 1]] (factor, bias); penalty 0.5 x 2 ratings: A = [[6, 3], [3, 3]], b = [5, 3],
    so x = A⁻¹b = [2/3, 1/3]. A user with no rating keeps zeros."""
    factors, bias = factorization._half_step(np.array([0, 0]), np.array([0, 1]), np.array([1.0, 2.0]), 2,
                                             other=np.array([[1.0], [2.0]]), other_bias=np.zeros(2), reg=0.5)
    np.testing.assert_allclose(factors[:, 0], [2 / 3, 0.0])
    np.testing.assert_allclose(bias, [1 / 3, 0.0])


def test_als_recovers_a_dense_rank_one_matrix_with_biases():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 20
    p, q = rng.normal(size=n_users), rng.normal(size=n_items)
    truth = 3.0 + rng.normal(0, 0.3, n_users)[:, None] + rng.normal(0, 0.3, n_items)[None, :] + 0.5 * np.outer(p, q)
    users, items = np.divmod(np.arange(n_users * n_items), n_items)
    mf = factorization.fit_biased_mf(Interactions(users, items, n_users, n_items, truth.ravel()), factors=1,
                                     regularization=1e-6, iterations=30)
    assert np.abs(mf.predict(users, items) - truth.ravel()).max() < 0.01


def test_blend_weight_is_the_least_squares_weight_clipped_to_0_1():
    assert factorization.blend_weight(np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([2.0, 3.0])) == 0.5
    assert factorization.blend_weight(np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([0.0, 1.0])) == 1.0
    assert factorization.blend_weight(np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])) == 0.0
    assert factorization.blend_weight(np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([5.0, 6.0])) == 1.0


@pytest.fixture(scope="module")
def blended(small_encoded):
    """(rating model, its own predictions, the MF, weight, pairs) with the blend attached."""
    enc = small_encoded
    torch.manual_seed(0)
    model = RatingModel(enc.vocab_sizes, *feature_tensors(enc), float(enc.rating.mean()), dim=8, hidden=8).eval()
    for p in model.head.parameters():  # a head that matters, still well inside the star scale
        p.data.normal_(0, 0.3)
    mf = factorization.fit_biased_mf(Interactions.of(enc), factors=4, regularization=0.1, iterations=5)
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, enc.n_users, 400), rng.integers(0, enc.n_items, 400)
    own = predict(model, users, items)
    model.attach_blend(mf, 0.3)
    return model, own, mf, users, items


def test_the_folded_blend_predicts_the_weighted_sum(blended):
    model, own, mf, users, items = blended
    theirs = mf.predict(users, items)
    inside = (own > 0.5) & (own < 5) & (theirs > 0.5) & (theirs < 5)  # clipping aside
    assert inside.mean() > 0.9
    np.testing.assert_allclose(predict(model, users, items)[inside], (0.3 * own + 0.7 * theirs)[inside], atol=1e-5)
    no_user = model.fold().item_baselines()
    mf_baseline = np.clip(mf.mean + mf.item_bias, 0.5, 5)
    own_baseline = (model.global_mean + model.item_bias.weight[:, 0]).detach().numpy()
    np.testing.assert_allclose(no_user, np.clip(0.3 * own_baseline + 0.7 * mf_baseline, 0.5, 5), atol=1e-5)


def test_the_blend_travels_in_the_saved_state_and_the_onnx_graph(blended, small_encoded):
    model, _, _, users, items = blended
    params = {"dim": 8, "hidden": 8, "dropout": 0.1}  # RatingModel's default, as the fixture built it
    reloaded = RankingResult(state_to_bytes(model), params, small_encoded.vocab_sizes, 1.0).model()
    np.testing.assert_array_equal(predict(reloaded, users, items), predict(model, users, items))
    assert float(state_from_bytes(state_to_bytes(model))["blend_weight"][0]) == pytest.approx(0.3)
    graph = export.to_onnx(model.fold(), {"users": torch.as_tensor(users[:8]), "items": torch.as_tensor(items[:8])},
                           "ratings")
    got = rating_tables.onnx_session(graph).run(None, {"users": users, "items": items})[0]
    np.testing.assert_allclose(got, predict(model, users, items), atol=1e-4)
