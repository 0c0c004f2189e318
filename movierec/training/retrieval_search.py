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

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import numpy as np

from movierec.core.settings import DEFAULT_LR, RetrievalConfig, Settings
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

# What a trial draws; the rest of RetrievalConfig stays as configured. The learning rate is drawn as a
# factor of the model's own default (DEFAULT_LR: LightGCN's free embeddings take 3x the two-tower's
# steps), at the batch that default was set at (RetrievalConfig.learning_rate scales it with the
# batch); negatives beyond a batch's pairs are the whole batch, and are recorded as such (the ratings
# user tower has none to draw: its softmax is over the catalogue).
SEARCH_SPACE: dict[str, Choice | Uniform] = {
    "dim": Choice((32, 64, 128)),
    "temperature": Uniform(0.03, 0.3, log=True),
    "lr": Uniform(1 / 6, 3.0, log=True),
    "weight_decay": Uniform(1e-7, 1e-3, log=True),
    "negatives": Choice((256, 1024, 4096)),
}


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


@dataclass
class TrialPlan:
    """What every trial reads (``data``), the training loop's settings they share (``base``), and
    each trial's own settings (``configs``)."""

    data: dict
    base: dict
    configs: list[dict]


def plan_trials(enc: Encoded, train_idx: np.ndarray, settings: Settings) -> TrialPlan:
    """The trials of ``settings.retrieval_search``, as close to the training they choose for as a
    bounded search allows: the same validation pairs, scored among the movies each user rated in
    all of the fit pairs (a sample's would leave most of them unmasked and stop trials early), the
    batch the final training will take (the learning rate scales with it and negatives are capped
    by it), and the model's own learning-rate scale. What differs: a trial learns from at most
    ``trial_pairs`` of the pairs, for at most ``retrieval_search.epochs`` epochs."""
    cfg, search = settings.retrieval, settings.retrieval_search
    fit_idx, val_idx = validation_split(train_idx, settings)
    sample = fit_idx[trial_rows(settings, len(fit_idx))]
    final = loop_config(settings, cfg, len(fit_idx), enc.vocab_sizes, workers=cfg.workers, threads=1)
    trial_cfg = replace(cfg, epochs=search.epochs, workers=1)
    base = {**loop_config(settings, trial_cfg, len(sample), enc.vocab_sizes, workers=1, threads=1),
            "batch": min(final["batch"], len(sample))}
    configs = [{**drawn, "lr": drawn["lr"] * DEFAULT_LR[cfg.variant],
                "negatives": min(drawn["negatives"], base["batch"])}
               for drawn in draw(SEARCH_SPACE, search.trials, settings.seed)]
    return TrialPlan(training_data(enc, sample, val_idx, trial_cfg, seen_idx=fit_idx), base, configs)


def search(enc: Encoded, train_idx: np.ndarray, settings: Settings, storage_path: str) -> SearchResult:
    """Run ``settings.retrieval_search.trials`` trials (:func:`plan_trials`) with Ray Tune (inside a
    Ray session), one CPU each, as many at a time as the session has CPUs (on GPUs: a whole one
    each), and return the settings of the trial with the best validation DCG at any epoch."""
    from ray import tune

    cfg, plan = settings.retrieval, plan_trials(enc, train_idx, settings)
    resources = {"cpu": 1, **({"gpu": 1} if cfg.gpus_per_worker else {})}
    print(f"[train_retrieval] searching the {cfg.name} model's settings: {len(plan.configs)} Ray Tune trial(s) of "
          f"at most {plan.base['epochs']} epoch(s) on {len(plan.data['items']):,} pairs, batch {plan.base['batch']}",
          flush=True)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, data=plan.data, base=plan.base, configs=plan.configs),
                            resources),
        param_space={"trial": tune.grid_search(list(range(len(plan.configs))))},
        tune_config=tune.TuneConfig(metric="val_dcg", mode="max",
                                    scheduler=Schedule(plan.base["epochs"], min(2, plan.base["epochs"])).tune()),
        run_config=tune.RunConfig(storage_path=storage_path, name="retrieval-search", verbose=0),
    )
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} retrieval trial(s) failed: {grid.errors[0]}")
    trials = []
    for result in grid:
        history = result.metrics_dataframe[["epoch", "val_dcg"]].to_dict("records")
        scores = [row["val_dcg"] for row in history if np.isfinite(row["val_dcg"])]
        trials.append({"trial": result.config["trial"], **plan.configs[result.config["trial"]],
                       "epochs": int(max(row["epoch"] for row in history)),
                       "best_val_dcg": max(scores, default=float("-inf"))})
    trials.sort(key=lambda row: row["trial"])
    best = max(trials, key=lambda row: row["best_val_dcg"])
    if not np.isfinite(best["best_val_dcg"]):
        raise RuntimeError(f"none of the {len(trials)} retrieval trial(s) reached a finite validation DCG")
    chosen = plan.configs[best["trial"]]
    print(f"[train_retrieval] trial {best['trial']} chosen (validation DCG {best['best_val_dcg']:.4f}): "
          + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in chosen.items()), flush=True)
    return SearchResult(replace(cfg, **chosen), trials)


def train_searched(enc: Encoded, train_idx: np.ndarray, settings: Settings, storage_path: str, *,
                   session: Callable[[bool], AbstractContextManager] = lambda needed: nullcontext(),
                   spread: bool = False) -> RetrievalResult:
    """``retrieval.train`` with the settings a search chose where ``settings.retrieval_search.trials``
    asks for one, with the configured settings otherwise. ``session(needed)``: the Ray session each
    part runs in, when it ``needed`` one (the default: the caller's); so a search ends its Ray
    before a model that trains in the step's process does, and the idle trial workers' memory with it."""
    found = None
    if settings.retrieval_search.trials:
        with session(True):
            found = search(enc, train_idx, settings, storage_path)
        settings = replace(settings, retrieval=found.config)
    with session(settings.ray.uses_ray_train(settings.retrieval.workers)):
        result = train(enc, train_idx, settings, storage_path, spread=spread)
    if found is not None:
        result.search = found.trials
    return result
