"""Interactions: (user, movie) pairs and their index spaces as one checked value, and what the
fits that take it do with pairs that do not fit (swapped sizes, misaligned arrays, no stars)."""

import re

import numpy as np
import pytest

from benchmarks import baselines
from movierec.core import arrays
from movierec.core.arrays import Interactions
from movierec.models import factorization
from movierec.models.lightgcn import normalized_adjacency


def test_of_encoded_rows_gives_their_pairs_stars_and_sizes(small_encoded):
    enc = small_encoded
    rows = np.array([5, 0, 17])
    got = Interactions.of(enc, rows)
    np.testing.assert_array_equal(got.users, enc.user_idx[rows])
    np.testing.assert_array_equal(got.items, enc.item_idx[rows])
    np.testing.assert_array_equal(got.ratings, enc.rating[rows])
    assert (got.n_users, got.n_items, len(got)) == (enc.n_users, enc.n_items, 3)
    assert len(Interactions.of(enc)) == len(enc.user_idx)  # default: every rating
    assert Interactions.of(enc, rows, stars=False).ratings is None


def test_csr_is_each_users_movies_and_subset_keeps_the_index_spaces():
    pairs = Interactions(np.array([1, 0, 1, 2]), np.array([7, 8, 9, 5]), 4, 10, np.array([1.0, 2.0, 3.0, 4.0]))
    indptr, indices = pairs.csr()
    np.testing.assert_array_equal(indptr, [0, 1, 3, 4, 4])  # user 3 rated nothing
    np.testing.assert_array_equal(indices, [8, 7, 9, 5])
    for rows in (np.array([0, 2]), np.array([True, False, True, False])):  # indices or a mask
        part = pairs.subset(rows)
        np.testing.assert_array_equal(part.users, [1, 1])
        np.testing.assert_array_equal(part.items, [7, 9])
        np.testing.assert_array_equal(part.ratings, [1.0, 3.0])
        assert (part.n_users, part.n_items) == (4, 10)
        np.testing.assert_array_equal(part.csr()[0], [0, 0, 2, 2, 2])
    assert Interactions(pairs.users, pairs.items, 4, 10).subset(np.array([1])).ratings is None


@pytest.mark.parametrize(("pairs", "words"), [
    (([0, 1], [0], 2, 2), "items has shape (1,), expected (2,)"),
    (([0, 1], [0, 1], 2, 2, [4.0]), "ratings has shape (1,), expected (2,)"),
    (([[0, 1]], [[0, 1]], 2, 2), "users has shape (1, 2), expected (1,)"),
    (([0.0, 1.0], [0, 1], 2, 2), "users are float64, expected integer indices"),
    (([0, 5], [0, 1], 3, 9), "user index 5 is outside 0..2 (n_users=3)"),
    (([0, 1], [0, -1], 3, 9), "item index -1 is outside 0..8 (n_items=9)"),
])
def test_pairs_that_do_not_fit_their_index_spaces_are_refused_saying_which(pairs, words):
    users, items, n_users, n_items, *ratings = pairs
    with pytest.raises(ValueError, match="^Interactions: " + re.escape(words)):
        Interactions(np.array(users), np.array(items), n_users, n_items, *map(np.array, ratings))


def test_swapped_sizes_fail_at_the_call_not_inside_a_fit():
    """Three users rated movies 0..5: given the sizes the wrong way round (as loose arguments
    allowed), the pairs are refused before any fit starts."""
    users, items = np.array([0, 1, 2]), np.array([5, 3, 0])
    with pytest.raises(ValueError, match="item index 5 is outside 0..2"):
        Interactions(users, items, 6, 3, np.array([4.0, 3.0, 5.0]))


def test_fits_of_stars_refuse_pairs_without_ratings_and_the_graph_takes_them():
    pairs = Interactions(np.array([0, 1, 1]), np.array([0, 0, 1]), 2, 2)
    for fit in (factorization.fit_biased_mf, baselines.biases, baselines.matrix_factorization):
        with pytest.raises(ValueError, match="carry no ratings"):
            fit(pairs)
    assert normalized_adjacency(pairs).shape == (4, 4)  # the graph needs no stars


def test_csr_of_interactions_is_the_plain_csr(small_encoded):
    enc = small_encoded
    rows = np.flatnonzero(enc.rating >= 4)
    got = Interactions.of(enc, rows).csr()
    want = arrays.csr(enc.user_idx[rows], enc.item_idx[rows], enc.n_users)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
