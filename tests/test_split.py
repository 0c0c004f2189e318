import numpy as np
import pytest

from movierec.data.split import Split, holdout, join_training, split_ratings


def _toy(n=1000, users=50, items=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, users, n), rng.integers(0, items, n), rng.integers(0, 10_000, n)


def test_random_split_is_deterministic_and_disjoint():
    u, i, t = _toy()
    a = split_ratings(u, i, t, "random", 0.2, seed=7)
    b = split_ratings(u, i, t, "random", 0.2, seed=7)
    c = split_ratings(u, i, t, "random", 0.2, seed=8)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    assert len(np.intersect1d(a.train, a.test)) == 0
    assert len(a.train) == 800
    assert len(a.test) + a.dropped_test == 200


def test_no_unknown_users_or_items_in_test():
    # User 99 and item 99 occur once each: wherever they land, they must never be tested on.
    u, i, t = _toy()
    u, i, t = np.append(u, 99), np.append(i, 98), np.append(t, 5)
    for method in ("random", "temporal"):
        s = split_ratings(u, i, t, method, 0.3, seed=1)
        assert set(u[s.test]) <= set(u[s.train])
        assert set(i[s.test]) <= set(i[s.train])


def test_dropped_are_counted_exactly():
    # Three ratings; the latest belongs to a user never seen before -> dropped by the temporal split.
    u = np.array([0, 0, 1, 0, 2])
    i = np.array([0, 1, 0, 1, 0])
    t = np.array([1, 2, 3, 4, 5])
    s = split_ratings(u, i, t, "temporal", 0.4)
    assert s.cutoff_timestamp == 4
    assert s.train.tolist() == [0, 1, 2]
    assert s.test.tolist() == [3]
    assert s.dropped_test == 1


def test_temporal_split_never_trains_on_the_future():
    u, i, t = _toy()
    s = split_ratings(u, i, t, "temporal", 0.25)
    assert t[s.train].max() < t[s.test].min()
    assert t[s.test].min() >= s.cutoff_timestamp


def test_bad_arguments():
    u, i, t = _toy(10)
    with pytest.raises(ValueError, match="split method"):
        split_ratings(u, i, t, "leave-one-out")
    with pytest.raises(ValueError, match="test_fraction"):
        split_ratings(u, i, t, "random", 1.5)


def test_holdout_partitions_and_is_seeded():
    idx = np.arange(100, 200)
    fit, val = holdout(idx, 0.1, seed=3)
    assert len(val) == 10 and len(fit) == 90
    assert sorted(np.concatenate([fit, val]).tolist()) == idx.tolist()
    assert np.array_equal(val, holdout(idx, 0.1, seed=3)[1])


def test_stratified_split_keeps_each_users_share():
    u, i, t = _toy(2000, users=20, items=300)
    s = split_ratings(u, i, t, "stratified", 0.25, seed=42)
    for user in range(20):
        n = int((u == user).sum())
        assert int((u[s.train] == user).sum()) == round(0.75 * n)  # both round half to even
    assert len(s.train) + len(s.test) + s.dropped_test == len(u)
    again = split_ratings(u, i, t, "stratified", 0.25, seed=42)
    assert np.array_equal(s.test, again.test)
    assert not np.array_equal(s.test, split_ratings(u, i, t, "stratified", 0.25, seed=1).test)


def test_retrieval_validation_is_a_random_sample_inside_the_rating_models_carve_out():
    """The capped validation pairs used to be the lowest row numbers of the 5% carve-out: on a
    file sorted by user, the ranker and the sources were tuned on the lowest user ids, and the
    rest of the carve-out was in no fit at all."""
    from dataclasses import replace

    from movierec.core.settings import Settings
    from movierec.training.retrieval import MAX_VALIDATION, validation_split

    train = np.arange(400_000)
    settings = Settings(seed=3)
    fit, val = validation_split(train, settings)
    assert len(val) == MAX_VALIDATION and len(np.intersect1d(fit, val)) == 0
    assert np.array_equal(np.union1d(fit, val), train)  # all of train: nothing left out
    assert val.min() < 40_000 and val.max() > 360_000  # spread over the file, not its first rows
    _, rating_val = holdout(train, settings.tune.val_fraction, settings.seed)
    assert np.isin(val, rating_val).all()  # pairs the rating model never trains on
    small = np.arange(10_000)
    assert np.array_equal(validation_split(small, settings)[1], holdout(small, 0.05, 3)[1])
    # the rating model's carve-out is capped the same way: a random sample, the rest in the fit
    fit, capped = holdout(train, 0.1, 3, cap=1000)
    assert len(capped) == 1000 and len(fit) == len(train) - 1000 and capped.max() > 360_000
    assert np.isin(capped, holdout(train, 0.1, 3)[1]).all()
    wrong = replace(settings, retrieval=replace(settings.retrieval, val_fraction=0.2))
    with pytest.raises(ValueError, match="must not exceed tune.val_fraction"):
        validation_split(small, wrong)


def test_ratings_users_sent_join_training_only_each_pair_once_and_never_on_a_test_pair():
    """Rows 0-3 are the data (split by hand: 0, 1, 2 train, 3 test), rows 4-8 what users sent:
    4 rates the test pair (user 1, movie 1) and is left out; 5 re-rates train pair (0, 0) later
    and replaces row 0; 6 rates train pair (0, 1) before the data did and is left out as older;
    7 is a new pair of a known user, 8 a new user's. The test split is untouched."""
    u = np.array([0, 0, 1, 1, 1, 0, 0, 2, 3])
    i = np.array([0, 1, 0, 1, 1, 0, 1, 2, 0])
    t = np.array([10, 20, 30, 40, 50, 60, 5, 70, 80])
    drawn = Split(np.array([0, 1, 2]), np.array([3]), "random", dropped_test=0)
    joined = join_training(drawn, u, i, t, n_base=4)
    assert joined.train.tolist() == [1, 2, 5, 7, 8] and joined.test.tolist() == [3]
    assert (joined.feedback_train, joined.feedback_left_out, joined.feedback_replaced, joined.feedback_outdated) == (
        3, 1, 1, 1)
    assert join_training(drawn, u[:4], i[:4], t[:4], n_base=4) is drawn  # nothing sent


@pytest.mark.parametrize("method", ["random", "stratified", "temporal"])
def test_ratings_users_sent_after_the_cutoff_all_reach_training_and_the_test_split_stays_the_datas(method):
    """With the temporal protocol every sent rating is newer than the cutoff: drawn over all rows,
    none reached training (0 of 800 in the issue); with the random one, a fifth landed in test."""
    u, i, t = _toy()
    pairs = np.random.default_rng(5).choice(60 * 5, 200, replace=False)  # 200 distinct pairs, none in the data:
    sent_u, sent_i = pairs // 5, 40 + pairs % 5  # movies 40-44 and users 50-59 are new
    data = split_ratings(u, i, t, method, 0.25, seed=3)
    joined = join_training(data, np.append(u, sent_u), np.append(i, sent_i),
                           np.append(t, 20_000 + np.arange(len(sent_u))), n_base=len(u))
    assert np.array_equal(joined.test, data.test)
    assert joined.feedback_train == len(sent_u) and set(range(len(u), len(u) + len(sent_u))) <= set(joined.train)


def test_coldstart_holds_out_whole_movies_with_every_rating_of_known_users():
    """A tenth of the rated movies leave train with all their ratings; their ratings by users known in train
    are the test split (the others are dropped and counted); seeded."""
    u, i, t = _toy(n=2000, users=60, items=50)
    s = split_ratings(u, i, t, "coldstart", 0.1, seed=3)
    cold = np.unique(i[s.test])
    assert len(cold) == 5  # round(0.1 x 50 rated movies)
    assert not np.isin(i[s.train], cold).any()  # no held-out movie has a training rating
    of_cold = np.flatnonzero(np.isin(i, cold))
    known = np.isin(u[of_cold], u[s.train])
    assert np.array_equal(s.test, of_cold[known]) and s.dropped_test == int((~known).sum())
    assert len(s.train) + len(of_cold) == len(u)
    assert np.array_equal(split_ratings(u, i, t, "coldstart", 0.1, seed=3).test, s.test)
    assert not np.array_equal(np.unique(i[split_ratings(u, i, t, "coldstart", 0.1, seed=4).test]), cold)
