import pytest

from movierec import pipeline

GOOD = {"protocol": "tfrs", "retrieval_workers": 2, "retrieval_epochs": 3, "tune_samples": 2, "tune_epochs": 2,
        "n_trees": 10, "num_cpus": 2}


def test_good_parameters_pass():
    pipeline.check_parameters(**GOOD)


@pytest.mark.parametrize(
    "change, message",
    [({"protocol": "leave-one-out"}, "--protocol"),
     ({"retrieval_workers": 0}, "--retrieval-workers"), ({"tune_samples": 0}, "--tune-samples"),
     ({"n_trees": 0}, "--n-trees")],
)
def test_bad_parameters_name_the_option(change, message):
    with pytest.raises(ValueError, match=message):
        pipeline.check_parameters(**{**GOOD, **change})


def test_load_data_sources(ml100k_dir):
    assert pipeline.load_data(str(ml100k_dir), max_ratings=500).ratings.num_rows == 500
    assert pipeline.load_data(synthetic_ratings=3000).ratings.num_rows == 3000
    with pytest.raises(ValueError, match="either"):
        pipeline.load_data(str(ml100k_dir), synthetic_ratings=10)


def test_protocol_splits(small_encoded):
    enc = small_encoded
    tfrs, msr = pipeline.split_for(enc, "tfrs", 42), pipeline.split_for(enc, "msr", 42)
    assert tfrs.protocol == "random" and len(tfrs.test) + tfrs.dropped_test == round(0.2 * len(enc.rating))
    assert msr.protocol == "stratified"
    assert set(enc.user_idx[msr.test]) <= set(enc.user_idx[msr.train])
    with pytest.raises(ValueError, match="unknown protocol"):
        pipeline.split_for(enc, "netflix", 42)
