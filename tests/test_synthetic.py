"""The synthetic generator (``movierec.data.synthetic``): exact counts, unique pairs, skew, determinism.

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""


import numpy as np
import pytest
from data_samples import _assert_same

from movierec import data
from movierec.data import synthetic


def _pairs(ds: data.Dataset) -> np.ndarray:
    return ds.ratings.column("user_id").to_numpy() * 1_000_000 + ds.ratings.column("item_id").to_numpy()


def _check_synthetic(ds: data.Dataset, n_ratings: int, n_users: int, n_items: int) -> None:
    r = ds.ratings
    assert r.schema == data.RATINGS_SCHEMA
    assert r.num_rows == n_ratings
    assert len(np.unique(_pairs(ds))) == n_ratings
    stars = r.column("rating").to_numpy()
    assert set(np.unique(stars)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 1 <= r.column("user_id").to_numpy().min() and r.column("user_id").to_numpy().max() <= n_users
    assert 1 <= r.column("item_id").to_numpy().min() and r.column("item_id").to_numpy().max() <= n_items
    assert (ds.users.num_rows, ds.items.num_rows) == (n_users, n_items)
    assert ds.items.schema == data.ITEMS_SCHEMA and ds.users.schema == data.USERS_SCHEMA
    # Popularity is skewed: the top 10% of items carry well over 10% (here: > 30%) of the ratings.
    counts = np.sort(np.bincount(r.column("item_id").to_numpy(), minlength=n_items + 1)[1:])[::-1]
    assert counts[: n_items // 10].sum() > 0.3 * n_ratings


def test_generate_exact_count_unique_pairs_and_skew():
    ds = synthetic.generate(n_users=300, n_items=200, n_ratings=5000, seed=1)
    assert ds.name == "synthetic-300u-200i-5000r"
    _check_synthetic(ds, 5000, 300, 200)
    assert len(np.unique(ds.ratings.column("rating").to_numpy())) == 5  # all star levels used


def test_generate_is_deterministic_per_seed():
    a = synthetic.generate(n_users=100, n_items=80, n_ratings=1000, seed=7)
    b = synthetic.generate(n_users=100, n_items=80, n_ratings=1000, seed=7)
    c = synthetic.generate(n_users=100, n_items=80, n_ratings=1000, seed=8)
    _assert_same(a, b)
    assert not a.ratings.equals(c.ratings)


def test_generate_at_the_density_limit():
    ds = synthetic.generate(n_users=10, n_items=10, n_ratings=50, seed=0)
    assert ds.ratings.num_rows == 50 and len(np.unique(_pairs(ds))) == 50


@pytest.mark.parametrize(
    "sizes",
    [(10, 10, 51), (0, 10, 5), (10, 0, 5), (10, 10, 0), (10, 10, -1), (1, 1, 1)],
)
def test_generate_rejects_impossible_sizes(sizes):
    n_users, n_items, n_ratings = sizes
    with pytest.raises(ValueError):
        synthetic.generate(n_users=n_users, n_items=n_items, n_ratings=n_ratings)


def test_ml20m_like_shape():
    # scale = 20_000 / 20_000_263: users 138_493 * scale = 138.49 -> 138; items 26_744 * sqrt(scale) = 845.7 -> 846.
    ds = synthetic.ml20m_like(20_000, seed=3)
    _check_synthetic(ds, 20_000, 138, 846)
    _assert_same(ds, synthetic.ml20m_like(20_000, seed=3))
    assert not ds.ratings.equals(synthetic.ml20m_like(20_000, seed=4).ratings)
    # 500 ratings: 138_493 * scale = 3.5 users -> floored to 100; 26_744 * sqrt(scale) = 133.7 -> 134 items.
    small = synthetic.ml20m_like(500)
    assert small.ratings.num_rows == 500 and (small.users.num_rows, small.items.num_rows) == (100, 134)
    # 100 ratings: 26_744 * sqrt(scale) = 59.8 items -> floored to 100 as well.
    tiny = synthetic.ml20m_like(100)
    assert tiny.ratings.num_rows == 100 and (tiny.users.num_rows, tiny.items.num_rows) == (100, 100)
    with pytest.raises(ValueError):
        synthetic.ml20m_like(0)


def test_ml20m_like_rejects_negative_size():
    with pytest.raises(ValueError):
        synthetic.ml20m_like(-5)
