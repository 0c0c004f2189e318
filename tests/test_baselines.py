import numpy as np

from benchmarks import baselines
from movierec.core import metrics
from movierec.core.arrays import Interactions


def _ratings(rng, n_users=60, n_items=40, n=1500):
    u, i = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    item_quality = np.linspace(-1, 1, n_items)
    r = np.clip(np.round(3.5 + item_quality[i] + rng.normal(0, 0.3, n)), 1, 5).astype(np.float32)
    return u, i, r


def test_biases_recover_item_quality(rng):
    u, i, r = _ratings(rng)
    model = baselines.biases(Interactions(u, i, 60, 40, r), reg=1.0)
    assert np.corrcoef(model.item_bias, np.linspace(-1, 1, 40))[0, 1] > 0.95
    assert metrics.rmse(model.predict(u, i), r) < metrics.rmse(np.full(len(r), r.mean()), r)
    # Ordering by the item vectors is ordering by item bias.
    assert np.argmax(model.user_vecs[0] @ model.item_vecs.T) == np.argmax(model.item_bias)


def test_matrix_factorization_fits_and_vectors_match_predictions(rng):
    u, i, r = _ratings(rng)
    model = baselines.matrix_factorization(Interactions(u, i, 60, 40, r), dim=4, epochs=15, weight_decay=0.01)
    assert metrics.rmse(model.predict(u, i), r) < 0.6
    # user_vecs . item_vecs differs from the prediction only by per-user constants (mean + user bias).
    raw = model.global_mean + model.user_bias[u] + (model.user_vecs[u] * model.item_vecs[i]).sum(1)
    unclipped = (raw >= 0.5) & (raw <= 5)
    assert np.allclose(raw[unclipped], model.predict(u, i)[unclipped], atol=1e-4)
