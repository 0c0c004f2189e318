"""The retrieval model's settings chosen per dataset by Ray Tune (``movierec.training.retrieval_search``)."""

import tempfile
from dataclasses import asdict, replace

import numpy as np
import pytest

from movierec.core.settings import DEFAULT_LR, RaySettings, RetrievalConfig, RetrievalSearchConfig, Settings
from movierec.data.split import DataSplit, split_ratings
from movierec.reports import cards
from movierec.training import retrieval_search
from movierec.training.retrieval import RetrievalResult

# Four trials one at a time (ASHA sees them in a fixed order: seed 42 has it stop the last at its rung, epoch
# 2), and the final training as long as a trial.
SEARCH = RetrievalSearchConfig(trials=4, epochs=3)
SEARCHED = Settings(retrieval=RetrievalConfig(hidden=32, epochs=3, batch_size=256, patience=10),
                    retrieval_search=SEARCH, ray=RaySettings(num_cpus=1))


def test_every_draw_is_a_retrieval_config_within_the_space(small_encoded):
    """Drawn with the run's seed; the learning rate around the model's own default, negatives never
    beyond the batch (what the loss uses is what the card and the bundle say)."""
    split = split_ratings(small_encoded.user_idx, small_encoded.item_idx, small_encoded.timestamp, "random", 0.2,
                          seed=0)
    many = replace(SEARCHED, retrieval_search=RetrievalSearchConfig(trials=50))
    for model in ("two_tower", "lightgcn"):
        settings = replace(many, retrieval=replace(SEARCHED.retrieval, model=model))
        plan = retrieval_search.plan_trials(small_encoded, split.train, settings)
        assert plan.configs == retrieval_search.plan_trials(small_encoded, split.train, settings).configs
        assert plan.configs != retrieval_search.plan_trials(small_encoded, split.train,
                                                            replace(settings, seed=1)).configs
        for config in plan.configs:
            cfg = replace(settings.retrieval, **config)  # every key is a RetrievalConfig field
            assert DEFAULT_LR[model] / 6 <= cfg.lr < DEFAULT_LR[model] * 3
            assert cfg.negatives <= plan.base["batch"] == 256 and cfg.dim in (32, 64, 128)
            assert 0.03 <= cfg.temperature < 0.3 and 1e-7 <= cfg.weight_decay < 1e-3
        assert {c["negatives"] for c in plan.configs} == {256}  # 1,024 and 4,096 are the whole batch here
        assert len({c["dim"] for c in plan.configs}) == 3


def test_sampled_trials_still_know_every_rated_movie_and_take_the_final_batch(small_encoded):
    """On a sample of the fit pairs a trial still scores validation among the movies each user rated
    in all of them (else most would count as recommendable and stop trials early), and steps with the
    batch the model will train with."""
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    settings = replace(SEARCHED, retrieval=replace(SEARCHED.retrieval, batch_size=0))
    full = retrieval_search.plan_trials(enc, split.train, settings)
    sampled = retrieval_search.plan_trials(
        enc, split.train, replace(settings, retrieval_search=replace(SEARCH, trial_pairs=2000)))
    assert len(full.data["items"]) > 4000 and len(sampled.data["items"]) == 2000
    assert all(np.array_equal(a, b) for a, b in zip(full.data["val_seen"], sampled.data["val_seen"]))
    assert np.array_equal(full.data["val_items"], sampled.data["val_items"])
    assert sampled.base["batch"] == full.base["batch"] == 1024  # the final training's, not the sample's


def test_trials_train_on_a_seeded_sample_only_above_the_cap():
    small = Settings(retrieval_search=RetrievalSearchConfig(trial_pairs=100))
    assert np.array_equal(retrieval_search.trial_rows(small, 100), np.arange(100))
    rows = retrieval_search.trial_rows(small, 1000)
    assert len(rows) == 100 and len(np.unique(rows)) == 100 and np.all(np.diff(rows) > 0) and rows.max() < 1000
    assert np.array_equal(rows, retrieval_search.trial_rows(small, 1000))
    assert not np.array_equal(rows, retrieval_search.trial_rows(replace(small, seed=1), 1000))


def test_the_retrieval_card_shows_the_search_best_first():
    trials = [{"trial": 0, "dim": 32, "temperature": 0.1, "epochs": 2, "best_val_dcg": 0.11},
              {"trial": 1, "dim": 64, "temperature": 0.2, "epochs": 3, "best_val_dcg": 0.19}]
    result = RetrievalResult(b"", RetrievalConfig(), {}, [{"epoch": 1, "loss": 5.0, "val_dcg": 0.1}], search=trials)
    from movierec.models.sources import SourceModels

    card = [c.render() for c in cards.retrieval_card(result, SourceModels({}, {}, {}))]
    text = " ".join(str(c) for c in card)
    assert "Trial 1 of 2 chose the settings above" in text and "0.1900" in text
    search = [c for c in card if c.get("type") == "table" and "best_val_dcg" in c["columns"]]
    assert [row[0] for row in search[0]["data"]] == ["1", "0"]
    plain = [c.render() for c in cards.retrieval_card(replace(result, search=[]), SourceModels({}, {}, {}))]
    assert "search" not in " ".join(str(c) for c in plain)


@pytest.fixture(scope="module")
def searched(small_encoded):
    """The flow step's retrieval training with a search of ``SEARCH`` on the toy data (its own Ray
    session), and the trials' settings."""
    from movierec import pipeline

    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    result = pipeline.train_retrieval(DataSplit(enc, split), SEARCHED, tempfile.mkdtemp())
    return result, retrieval_search.plan_trials(enc, split.train, SEARCHED).configs


@pytest.mark.integration
def test_the_search_trains_the_model_with_the_best_trials_settings(searched):
    import ray

    searched, configs = searched
    assert not ray.is_initialized()  # the step's Ray session ended with it
    assert [row["trial"] for row in searched.search] == list(range(SEARCH.trials))
    assert [{k: row[k] for k in retrieval_search.SEARCH_SPACE} for row in searched.search] == configs
    best = max(searched.search, key=lambda row: row["best_val_dcg"])
    assert asdict(searched.config) == asdict(replace(SEARCHED.retrieval, **configs[best["trial"]]))
    # The same loop, seed, data and epochs as the chosen trial: the model reaches the trial's score exactly.
    assert max(row["val_dcg"] for row in searched.history) == best["best_val_dcg"]
    stopped = [row for row in searched.search if row["epochs"] < SEARCH.epochs]
    assert 0 < len(stopped) < SEARCH.trials, f"precondition: ASHA stops some trials at its rung: {searched.search}"
    assert all(row["best_val_dcg"] < best["best_val_dcg"] for row in stopped)
