import pytest

from movierec import pipeline

GOOD = {"protocol": "random", "test_fraction": 0.2, "retrieval_workers": 2, "retrieval_epochs": 3,
        "tune_samples": 2, "tune_epochs": 2, "n_trees": 10, "num_cpus": 2}


def test_good_parameters_pass():
    pipeline.check_parameters(**GOOD)


@pytest.mark.parametrize(
    "change, message",
    [({"protocol": "leave-one-out"}, "--split"), ({"test_fraction": 1.0}, "--test-fraction"),
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
