"""The candidate source interface (``movierec.models.sources``): every registered source fits, scores,
folds a history in and travels through a bundle's arrays the same way, and refuses, by name,
arrays that do not fit the catalogue or are not finite."""

import dataclasses

import numpy as np
import pytest

from movierec.core.arrays import Interactions
from movierec.core.settings import SourcesConfig
from movierec.errors import BundleError
from movierec.models import sources

N_USERS, N_ITEMS = 30, 20
# the smallest grids, and every registered source switched on
CONFIG = SourcesConfig(**{name: True for name in sources.SOURCES}, ease_lambdas=(5.0,), als_factors=(4,),
                       als_regularization=(0.1,), als_alpha=(2.0,), als_iterations=3)


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    return sources.interactions(Interactions(rng.integers(0, N_USERS, 300), rng.integers(0, N_ITEMS, 300), N_USERS,
                                             N_ITEMS))


@pytest.fixture(scope="module", params=list(sources.SOURCES))
def fitted(request, x) -> sources.CandidateSource:
    cls = sources.SOURCES[request.param]
    return cls.fit(x, cls.grid(CONFIG)[0], CONFIG, seed=0)


def test_every_source_has_its_switch_and_a_grid_in_the_settings():
    """A source is switched by the SourcesConfig field of its name (the CLI flag --<name>)."""
    for name, cls in sources.SOURCES.items():
        assert cls.name == name and isinstance(getattr(SourcesConfig(), name), bool) and cls.label
        assert cls.grid(SourcesConfig()), name


def test_an_unknown_source_is_refused_with_the_names_known():
    with pytest.raises(BundleError, match="unknown candidate source 'itemknn': this movierec knows ease, als"):
        sources.source_class("itemknn")


def test_a_source_scores_and_folds_in_as_many_movies_as_the_catalogue(fitted, x):
    users = np.array([0, 3, 7])
    scores = fitted.scores(users, x[users])
    assert scores.shape == (3, N_ITEMS) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    row = fitted.fold_in(x[[3]].indices)
    assert row.shape == (N_ITEMS,) and np.isfinite(row).all()


def test_a_source_round_trips_through_its_arrays_with_and_without_users(fitted, x):
    """What serving reads back answers as what training fitted: a known user as evaluation
    scored them, a new user's history folded in alike."""
    users = np.arange(N_USERS)
    for user_data in (True, False):
        values, info = fitted.to_arrays(user_data)
        back = type(fitted).from_arrays(values, info, N_ITEMS, N_USERS if user_data else None)
        movies = x[[5]].indices
        np.testing.assert_allclose(back.fold_in(movies), fitted.fold_in(movies), rtol=1e-6)
        if user_data:
            np.testing.assert_allclose(back.scores(users, x), fitted.scores(users, x), rtol=1e-6)
            np.testing.assert_allclose(back.user_scores(5, movies), fitted.scores(np.array([5]), x[[5]])[0],
                                       rtol=1e-5, atol=1e-6)


def test_a_source_refuses_arrays_of_the_wrong_shape_or_with_nan(fitted):
    values, info = fitted.to_arrays(True)
    cls, name = type(fitted), fitted.name
    for key, value in values.items():
        poisoned = value.astype(np.float32)
        poisoned.flat[0] = np.nan
        with pytest.raises(BundleError, match=f"source '{name}': NaN or infinite values in '{key}'"):
            cls.from_arrays({**values, key: poisoned}, info, N_ITEMS, N_USERS)
        with pytest.raises(BundleError, match=f"source '{name}': "):
            cls.from_arrays({**values, key: value[:-1]}, info, N_ITEMS, N_USERS)
        with pytest.raises(BundleError, match=f"source '{name}': no '{key}' array"):
            cls.from_arrays({k: v for k, v in values.items() if k != key}, info, N_ITEMS, N_USERS)
    with pytest.raises(BundleError, match=f"source '{name}': "):  # for a smaller catalogue
        cls.from_arrays(values, info, N_ITEMS - 1, N_USERS)


def test_a_source_refuses_arrays_and_settings_it_does_not_write(fitted):
    """An extra array under a known source (``ease/junk`` in sources.npz) was silently ignored,
    although the loader refuses the arrays of a source model.json does not name."""
    values, info = fitted.to_arrays(True)
    cls, name = type(fitted), fitted.name
    with pytest.raises(BundleError, match=f"source '{name}': unexpected array 'junk' \\(expected 'items', "):
        cls.from_arrays({**values, "junk": np.zeros(3, np.float32)}, info, N_ITEMS, N_USERS)
    with pytest.raises(BundleError, match=f"source '{name}': settings are not a JSON object"):
        cls.check_settings([])


def test_als_refuses_what_cannot_fold_a_history_in(x):
    als = sources.Als.fit(x, sources.Als.grid(CONFIG)[0], CONFIG, seed=0)
    values, info = als.to_arrays(True)
    for bad in ({}, {**info, "alpha": 0.0}, {**info, "regularization": float("nan")}, {**info, "alpha": True}):
        with pytest.raises(BundleError, match="source 'als': no regularisation >= 0 and alpha > 0"):
            sources.Als.from_arrays(values, bad, N_ITEMS, N_USERS)
    with pytest.raises(BundleError, match="source 'als': user factors in a bundle without per-user data"):
        sources.Als.from_arrays(values, info, N_ITEMS, None)
    assert dataclasses.replace(als, user_factors=None).user_scores(None, np.array([1, 2])).shape == (N_ITEMS,)


def test_only_the_switched_on_sources_are_fitted_and_chosen(x):
    rng = np.random.default_rng(1)
    fit = Interactions(rng.integers(0, N_USERS, 300), rng.integers(0, N_ITEMS, 300), N_USERS, N_ITEMS)
    val = Interactions(rng.integers(0, N_USERS, 40), rng.integers(0, N_ITEMS, 40), N_USERS, N_ITEMS)
    models = sources.fit_sources(fit, val, dataclasses.replace(CONFIG, als=False), seed=0)
    assert "als" not in models.final and list(models.final) == list(models.tuning) == list(models.chosen)
    assert list(models.final) == [name for name in sources.SOURCES if name != "als"]  # the registry's order


def test_fit_and_validation_pairs_in_other_index_spaces_are_refused_by_name():
    """Pairs of another catalogue used to be concatenated into one matrix of the fit's shape: a
    validation movie beyond it failed inside scipy, one within it was silently another movie."""
    fit = Interactions(np.array([0, 1]), np.array([0, 1]), N_USERS, N_ITEMS)
    val = Interactions(np.array([0]), np.array([2]), N_USERS, N_ITEMS + 5)
    with pytest.raises(ValueError, match=rf"{N_USERS} users x {N_ITEMS} movies.*{N_USERS} x {N_ITEMS + 5}"):
        sources.fit_sources(fit, val, CONFIG, seed=0)


def test_rp3beta_is_the_two_step_walk_by_hand():
    """3 users x 3 movies: user 0 rated movies 0 and 1, user 1 movies 1 and 2, user 2 movie 0.
    Movie -> user transitions: movie 0 -> users 0, 2 (1/2 each), movie 1 -> users 0, 1, movie 2 ->
    user 1; user -> movie: user 0 -> 0, 1 (1/2 each), user 1 -> 1, 2, user 2 -> 0. At alpha 1 the
    walk is W[0] = (.75, .25, 0), W[1] = (.25, .5, .25), W[2] = (0, .5, .5); the diagonal goes, and
    beta 0.5 divides column j by sqrt(count_j) = (√2, √2, 1): the rarer movie 2 gains."""
    x = sources.interactions(Interactions(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 0]), 3, 3))
    r2 = np.sqrt(2)
    model = sources.fit_rp3beta(x, alpha=1.0, beta=0.5, max_items=10)
    np.testing.assert_allclose(model.weights, [[0, 0.25 / r2, 0], [0.25 / r2, 0, 0.25], [0, 0.5 / r2, 0]], rtol=1e-6)
    # user 0 (movies 0 and 1): W[0] + W[1]; movie 2, rated by one user, now ranks first
    np.testing.assert_allclose(model.scores(np.array([0]), x[[0]]), [[0.25 / r2, 0.25 / r2, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(model.fold_in(np.array([0, 1])), [0.25 / r2, 0.25 / r2, 0.25], rtol=1e-6)
    # alpha 2 squares each transition probability: W[0, 1] = (1/2)² (1/2)² (via user 0)
    np.testing.assert_allclose(sources.fit_rp3beta(x, alpha=2.0, beta=0.0, max_items=10).weights[0, 1], 1 / 16)


def test_rp3beta_covers_the_most_rated_movies_and_walks_over_all_of_a_users_ratings():
    """Covering 2 of 4 movies: the others score 0, and a user's transitions still divide by
    everything they rated (user 2's movie 3 is uncovered but dilutes their step)."""
    x = sources.interactions(Interactions(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 1, 3]), 3, 4))
    model = sources.fit_rp3beta(x, alpha=1.0, beta=0.0, max_items=2)
    assert model.items.tolist() == [0, 1]
    # movie 0 -> user 0 (1) -> movie 1 (1/2); movie 1 -> users 0, 1, 2 (1/3 each) -> movie 0 via user 0 (1/2)
    np.testing.assert_allclose(model.weights, [[0, 0.5], [1 / 6, 0]], rtol=1e-6)
    assert (model.scores(np.arange(3), x)[:, [2, 3]] == 0).all()
