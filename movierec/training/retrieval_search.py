"""The retrieval model's settings chosen per dataset by Ray Tune: trials of the training loop of
``movierec.training.retrieval`` with settings drawn from ``SEARCH_SPACE``, the weaker stopped early by
ASHA on validation DCG, then the model trained once with the best trial's settings.

Defaults chosen on ML-100K do not carry to other catalogues: on ML-100K thinned to 30% of its
ratings the two-tower overfits in three to five epochs at the default temperature, and a 600-user x
10,000-movie catalogue wants other embedding sizes and negatives again. Trials are scored on the
retrieval model's own validation pairs (carved from train, never test), the ones its early stopping
and the second stage's tuning use. The trials run with Ray Tune whatever the data's size: the search
is opt-in (``--retrieval-trials``), and its trials are whole trainings, which repay Ray's start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from movierec.core.settings import RetrievalConfig, Settings
from movierec.data.features import Encoded
from movierec.training.retrieval import (
    RetrievalResult,
    loop_config,
    train,
    train_trial,
    training_data,
    validation_split,
)
from movierec.training.search_space import Choice, Schedule, Uniform, draw

# What a trial draws; the rest of RetrievalConfig stays as configured. Negatives above a batch's
# pairs count as the whole batch (ML-100K's 1,024-pair batches take at most 1,024).
SEARCH_SPACE: dict[str, Choice | Uniform] = {
    "dim": Choice((32, 64, 128)),
    "temperature": Uniform(0.03, 0.3, log=True),
    "lr": Uniform(5e-4, 1e-2, log=True),  # at 1,024 pairs a step (RetrievalConfig.learning_rate scales it)
    "weight_decay": Uniform(1e-7, 1e-3, log=True),
    "negatives": Choice((256, 1024, 4096)),
}
METRICS = ["epoch", "val_dcg", "loss", "examples_per_s"]  # a trial's row per epoch


@dataclass
class SearchResult:
    """The chosen settings, and each trial's: what it drew, epochs trained, best validation DCG."""

    config: RetrievalConfig
    trials: list[dict]


def _trainable(params: dict, data: dict, base: dict, configs: list[dict]) -> None:
    """One Tune trial: the retrieval training loop with ``configs[params["trial"]]``, reporting
    each epoch's validation DCG (ASHA stops the trial at a report). Early stopping within the trial
    (``RetrievalConfig.patience``) ends it too; its last epoch is then reported here."""
    from ray import tune

    trial = params["trial"]
    config = {**base, "cfg": {**base["cfg"], **configs[trial]}, "label": f"retrieval trial {trial}"}
    train_trial(config, data, tune.report)


def trial_rows(settings: Settings, n_pairs: int) -> np.ndarray:
    """Which of ``n_pairs`` fit pairs the trials train on: all of them, or a seeded uniform sample
    of ``retrieval_search.trial_pairs`` (ascending, so users' pairs keep their order)."""
    cap = settings.retrieval_search.trial_pairs
    if n_pairs <= cap:
        return np.arange(n_pairs)
    return np.sort(np.random.default_rng(settings.seed).choice(n_pairs, cap, replace=False))


def search(enc: Encoded, train_idx: np.ndarray, settings: Settings, storage_path: str) -> SearchResult:
    """Run ``settings.retrieval_search.trials`` trials with Ray Tune (inside a Ray session), one CPU
    (or one GPU, with ``retrieval.gpus_per_worker``) each, ``settings.ray.num_cpus`` at a time, and
    return the settings of the trial with the best validation DCG at any epoch."""
    from ray import tune

    cfg, plan = settings.retrieval, settings.retrieval_search
    fit_idx, val_idx = validation_split(train_idx, settings)
    fit_idx = fit_idx[trial_rows(settings, len(fit_idx))]
    trial_cfg = replace(cfg, epochs=plan.epochs, workers=1)
    base = loop_config(settings, trial_cfg, len(fit_idx), enc.vocab_sizes, workers=1, threads=1)
    configs = draw(SEARCH_SPACE, plan.trials, settings.seed)
    print(f"[train_retrieval] searching the {cfg.name} model's settings: {plan.trials} Ray Tune trial(s) of at most "
          f"{base['epochs']} epoch(s) on {len(fit_idx):,} pairs, {settings.ray.num_cpus} at a time", flush=True)
    resources = {"cpu": 1, **({"gpu": 1} if cfg.gpus_per_worker else {})}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, data=training_data(enc, fit_idx, val_idx, trial_cfg),
                                                 base=base, configs=configs), resources),
        param_space={"trial": tune.grid_search(list(range(len(configs))))},
        tune_config=tune.TuneConfig(metric="val_dcg", mode="max", max_concurrent_trials=settings.ray.num_cpus,
                                    scheduler=Schedule(base["epochs"], min(2, base["epochs"])).tune()),
        run_config=tune.RunConfig(storage_path=storage_path, name="retrieval-search", verbose=0),
    )
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} retrieval trial(s) failed: {grid.errors[0]}")
    trials = []
    for result in grid:
        history = result.metrics_dataframe[METRICS].to_dict("records")
        scores = [row["val_dcg"] for row in history if np.isfinite(row["val_dcg"])]
        trials.append({"trial": result.config["trial"], **configs[result.config["trial"]],
                       "epochs": int(max(row["epoch"] for row in history)),
                       "best_val_dcg": max(scores, default=float("-inf"))})
    trials.sort(key=lambda row: row["trial"])
    best = max(trials, key=lambda row: row["best_val_dcg"])
    if not np.isfinite(best["best_val_dcg"]):
        raise RuntimeError(f"none of the {len(trials)} retrieval trial(s) reached a finite validation DCG")
    chosen = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in configs[best["trial"]].items())
    print(f"[train_retrieval] trial {best['trial']} chosen (validation DCG {best['best_val_dcg']:.4f}): {chosen}",
          flush=True)
    return SearchResult(replace(cfg, **configs[best["trial"]]), trials)


def train_searched(enc: Encoded, train_idx: np.ndarray, settings: Settings, storage_path: str, *,
                   spread: bool = False) -> RetrievalResult:
    """``retrieval.train`` with the settings a search chose where ``settings.retrieval_search.trials``
    asks for one (inside a Ray session then), with the configured settings otherwise."""
    if not settings.retrieval_search.trials:
        return train(enc, train_idx, settings, storage_path, spread=spread)
    found = search(enc, train_idx, settings, storage_path)
    result = train(enc, train_idx, replace(settings, retrieval=found.config), storage_path, spread=spread)
    result.search = found.trials
    return result
