"""The rating model's hyper-parameter search (with Ray Tune, or in the step's process on small data), and its
blend with biased matrix factorisation.

Kept apart from ``movierec.models.rating_model`` (the model itself) so the model reads without Ray.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from movierec.core.arrays import Interactions
from movierec.core.metrics import rmse
from movierec.core.progress import Progress
from movierec.core.settings import Settings
from movierec.data.features import Encoded
from movierec.data.split import holdout
from movierec.models.factorization import BiasedMF, blend_weight, fit_biased_mf
from movierec.models.layers import feature_tensors, index_tensor
from movierec.models.rating_model import RatingModel, predict
from movierec.models.torch_runtime import (
    SparseDenseAdam,
    batches,
    cpu_state,
    state_from_bytes,
    state_to_bytes,
    training_device,
    training_threads,
    training_threads_here,
)
from movierec.training.search_space import Choice, Schedule, Uniform, draw

# The rating model's hyper-parameters (see search_space.draw).
SEARCH_SPACE: dict[str, Choice | Uniform] = {
    "dim": Choice((32, 64, 128)),
    "hidden": Choice((32, 64, 128)),
    "dropout": Uniform(0.0, 0.4),
    "lr": Uniform(1e-3, 5e-3, log=True),
    "weight_decay": Uniform(1e-5, 5e-4, log=True),  # dense layers
    "l2": Uniform(1e-2, 3e-1, log=True),  # id embeddings and biases, per rating (see RatingModel.id_l2)
    "batch_size": Choice((512, 1024)),  # smaller batches cost more per example than they gain
}


def _rmse(model: RatingModel, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> float:
    return rmse(predict(model, users, items), ratings)


@dataclass(frozen=True)
class TrialPlan:
    """How a trial runs, apart from the hyper-parameters the search chooses and the data."""

    max_epochs: int
    seed: int
    threads: int  # CPUs the trial trains on (Ray Tune: what Ray reserves for it)
    trials_per_gpu: int = 0  # > 0: each trial gets that share of one GPU and trains there

    def resources(self) -> dict[str, float]:
        """What Ray reserves for one trial."""
        return {"cpu": self.threads, **({"gpu": 1 / self.trials_per_gpu} if self.trials_per_gpu else {})}


def _epochs(params: dict, data: dict, plan: TrialPlan, label: object) -> Iterator[tuple[dict, RatingModel]]:
    """One trial's training: after each epoch, that epoch's metrics and the model (trained further
    when the caller asks for the next). Ray Tune's trials and the step's own run the same loop."""
    device = training_device(plan.resources().get("gpu", 0))
    torch.manual_seed(plan.seed)
    model = RatingModel(data["sizes"], data["user_features"], data["item_features"], data["global_mean"],
                        dim=params["dim"], hidden=params["hidden"], dropout=params["dropout"]).to(device)
    opt = SparseDenseAdam(model, params["lr"], params["weight_decay"])
    users, items = index_tensor(data["users"]).to(device), index_tensor(data["items"]).to(device)
    ratings = torch.tensor(data["ratings"], device=device)  # a copy: arrays from Ray's object store are read-only
    gen = torch.Generator().manual_seed(plan.seed)
    for epoch in range(plan.max_epochs):
        model.train()
        total, start = 0.0, time.perf_counter()
        progress = Progress(len(users), f"[tune_ranking] trial {label} epoch {epoch + 1}/{plan.max_epochs}")
        for idx in batches(len(users), params["batch_size"], gen):
            idx = idx.to(device)
            u, i = users[idx], items[idx]
            mse = nn.functional.mse_loss(model(u, i, i), ratings[idx])
            loss = mse + params["l2"] * model.id_l2(u, i)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += mse.item() * len(idx)
            progress.update(len(idx))
        speed = len(users) / max(time.perf_counter() - start, 1e-9)
        val = _rmse(model, data["val_users"], data["val_items"], data["val_ratings"])
        print(f"[tune_ranking] trial {label} epoch {epoch + 1}/{plan.max_epochs} "
              f"val_rmse {val:.4f} ({speed:,.0f} examples/s)", flush=True)
        yield {"val_rmse": val, "train_rmse": float(np.sqrt(total / len(users))), "epoch": epoch + 1,
               "examples_per_s": speed}, model


def _saved(model: RatingModel) -> bytes:
    """``model``'s weights as the bytes a checkpoint holds (on the CPU, loadable without a GPU)."""
    buffer = io.BytesIO()
    torch.save(cpu_state(model), buffer)
    return buffer.getvalue()


def _trainable(params: dict, data: dict, plan: TrialPlan, configs: list[dict]) -> None:
    """One Tune trial, of ``configs[params["trial"]]``: report validation RMSE every epoch,
    checkpoint only on improvement.

    Checkpointing only improvements makes a trial's latest checkpoint its best one, which is what
    the driver keeps.
    """
    from ray import tune

    training_threads(plan.threads)
    best = float("inf")
    for metrics, model in _epochs(configs[params["trial"]], data, plan, params["trial"]):
        if metrics["val_rmse"] < best:
            best = metrics["val_rmse"]
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "model.pt").write_bytes(_saved(model))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)


@dataclass
class Trial:
    """One trial of either search: its settings, one row of metrics per epoch it trained, and how
    to read its best epoch's weights (read from Tune's checkpoint only when asked; in this process
    only the best trial's are kept: a trial's weights grow with the users and movies)."""

    label: int | str
    config: dict
    history: list[dict]
    weights: Callable[[], bytes]

    @property
    def best_val_rmse(self) -> float:
        """The lowest finite validation RMSE (inf when every epoch diverged: such a trial is never the best)."""
        return min((row["val_rmse"] for row in self.history if np.isfinite(row["val_rmse"])), default=float("inf"))

    def best_epoch(self) -> int:
        """The first epoch with that score: the one whose weights a trial keeps."""
        best = self.best_val_rmse
        return next(row["epoch"] for row in self.history if row["val_rmse"] == best)

    def summary(self) -> dict:
        """The trial's row of the report: its settings, epochs trained and best score."""
        return {"trial": self.label, **{k: self.config[k] for k in sorted(self.config)},
                "epochs": max(row["epoch"] for row in self.history), "best_val_rmse": self.best_val_rmse}

    def curve(self) -> list[dict]:
        return [{"trial": self.label, "epoch": row["epoch"], "val_rmse": row["val_rmse"],
                 "examples_per_s": row["examples_per_s"]} for row in self.history]


@dataclass
class RankingResult:
    """The best trial's weights and settings plus every trial's summary and learning curve."""

    state: bytes
    params: dict
    sizes: dict[str, int]
    val_rmse: float
    trials: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)  # rows of trial, epoch, val_rmse
    blend: dict = field(default_factory=dict)  # the chosen blend with matrix factorisation, and each one tried
    ray_tune: bool = True  # False: the trials ran one after another in the step's process (uses_ray_tune)

    def model(self) -> RatingModel:
        return RatingModel.from_state(self.sizes, self.params, state_from_bytes(self.state))


def _tune_search(data: dict, plan: TrialPlan, configs: list[dict], storage_path: str, *, name: str,
                 max_concurrent: int, schedule: Schedule | None) -> list[Trial]:
    """The trials of ``configs`` with Ray Tune (inside a Ray session), ``max_concurrent`` at a
    time, each with ``plan.threads`` CPUs, stopped early by ``schedule``."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, data=data, plan=plan, configs=configs),
                            plan.resources()),
        param_space={"trial": tune.grid_search(list(range(len(configs))))},
        tune_config=tune.TuneConfig(metric="val_rmse", mode="min", max_concurrent_trials=max_concurrent,
                                    scheduler=schedule.tune() if schedule else None),
        # A trial checkpoints only when it improves, so its latest checkpoint is its best: the
        # one kept (an ML-100K run kept ~40 files, 41 MB, for ever).
        run_config=tune.RunConfig(storage_path=storage_path, name=name, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} Tune trial(s) failed: {grid.errors[0]}")

    def weights(result) -> Callable[[], bytes]:
        def read() -> bytes:
            with result.checkpoint.as_directory() as d:
                return Path(d, "model.pt").read_bytes()
        return read

    columns = ["epoch", "val_rmse", "train_rmse", "examples_per_s"]
    trials = [Trial(r.config["trial"], configs[r.config["trial"]], r.metrics_dataframe[columns].to_dict("records"),
                    weights(r)) for r in grid]
    return sorted(trials, key=lambda t: t.label)


def _local_search(data: dict, plan: TrialPlan, configs: list[dict], schedule: Schedule | None) -> list[Trial]:
    """The trials of ``configs`` one after another in this process, stopped early by ``schedule``.

    Hand-rolled rather than Ray Tune because on small data Ray's start-up and a process per trial
    cost more than the search (ML-100K at the test budget: ~25 s of a 38 s step, its trials ~3 s). The early
    stopping is ASHAScheduler's (``Schedule.stops``), so with one trial at a time both searches
    stop the same trials. Torch's settings for training hold for the search only."""
    rungs: dict[int, list[float]] = {epoch: [] for epoch in (schedule.rungs() if schedule else ())}
    trials: list[Trial] = []
    kept: dict[int, bytes] = {}  # the best trial's weights so far: a trial's grow with the users and movies
    with training_threads_here(plan.threads):
        for label, config in enumerate(configs):
            history: list[dict] = []
            best, weights = float("inf"), b""
            for metrics, model in _epochs(config, data, plan, label):
                history.append(metrics)
                if metrics["val_rmse"] < best:  # a strict improvement, as a Tune trial checkpoints
                    best, weights = metrics["val_rmse"], _saved(model)
                recorded = rungs.get(metrics["epoch"])
                if recorded is not None:
                    stop = schedule.stops(recorded, metrics["val_rmse"])
                    recorded.append(metrics["val_rmse"])
                    if stop:
                        break
            trials.append(Trial(label, config, history, lambda label=label: _kept(kept, label)))
            if best < min((t.best_val_rmse for t in trials[:-1]), default=float("inf")):
                kept.clear()
                kept[label] = weights
    return trials


def _kept(kept: dict[int, bytes], label: int) -> bytes:
    if label not in kept:
        raise RuntimeError(f"trial {label}'s weights were not kept: only the best trial's are")
    return kept[label]


def tune_ranking(enc: Encoded, train_idx: np.ndarray, settings: Settings, storage_path: str) -> RankingResult:
    """Search the rating model: ``settings.tune.samples`` trials with ASHA early stopping, with Ray
    Tune (call inside a Ray session), ``settings.ray.num_cpus`` trials at a time, or one after
    another in this process where Ray would cost more than it spreads (``uses_ray_tune``).

    Trials train on at most ``settings.tune.trial_ratings`` ratings (a uniform sample), so the
    search costs the same at any data size; when that is a sample, the best settings are then
    trained once on all the ratings, for as many epochs as the best trial needed but within
    ``settings.train_budget``. ``settings.retrieval.history`` adds each user's rated movies to the
    user features (see UserEncoder; it halves throughput for about 0.002 of RMSE on ML-100K).
    """
    search, seed, concurrency = settings.tune, settings.seed, settings.ray.num_cpus
    # a random sample when capped (the first rows of a user-sorted file were the lowest user ids)
    fit_idx, val_idx = holdout(train_idx, search.val_fraction, seed, cap=search.max_validation)
    # Validation ratings stay out of the history.
    user_feats, item_feats = feature_tensors(enc, fit_idx if settings.retrieval.history else None)
    rng = np.random.default_rng(seed)
    trial_idx = np.sort(rng.choice(fit_idx, search.trial_ratings, replace=False)) \
        if len(fit_idx) > search.trial_ratings else fit_idx

    def data(idx: np.ndarray) -> dict:
        return {
            "users": enc.user_idx[idx], "items": enc.item_idx[idx], "ratings": enc.rating[idx],
            "val_users": enc.user_idx[val_idx], "val_items": enc.item_idx[val_idx],
            "val_ratings": enc.rating[val_idx], "user_features": user_feats, "item_features": item_feats,
            "sizes": dict(enc.vocab_sizes), "global_mean": float(enc.rating[fit_idx].mean()),
        }

    schedule = Schedule(search.epochs, min(2, search.epochs))
    with_ray = uses_ray_tune(settings, len(train_idx))
    configs = draw(SEARCH_SPACE, search.samples, seed)
    if with_ray:
        trials = _tune_search(data(trial_idx), TrialPlan(search.epochs, seed, 1, search.trials_per_gpu), configs,
                              storage_path, name="ranking", max_concurrent=concurrency, schedule=schedule)
    else:
        print(f"[tune_ranking] {search.samples} trial(s) one after another in this process, "
              f"{concurrency} thread(s) each", flush=True)
        trials = _local_search(data(trial_idx), TrialPlan(search.epochs, seed, concurrency, search.trials_per_gpu),
                               configs, schedule)
    best = min(trials, key=lambda t: t.best_val_rmse)
    if not np.isfinite(best.best_val_rmse):
        raise RuntimeError(f"every one of the {len(trials)} rating-model trial(s) diverged (no finite validation "
                           "RMSE): lower the learning rates in the search space or check the ratings")
    if len(trial_idx) < len(fit_idx):
        epochs = settings.epochs_for(best.best_epoch(), len(fit_idx))
        print(f"[tune_ranking] refitting the best settings on all {len(fit_idx):,} ratings for {epochs} epoch(s)",
              flush=True)
        plan = TrialPlan(epochs, seed, concurrency, search.trials_per_gpu)
        refit = _tune_search(data(fit_idx), plan, [best.config], storage_path, name="ranking-refit",
                             max_concurrent=1, schedule=None) if with_ray else \
            _local_search(data(fit_idx), plan, [best.config], None)
        best = replace(refit[0], label="refit")
        trials.append(best)
    state = best.weights()
    params = {k: best.config[k] for k in ("dim", "hidden", "dropout")}
    blend = {}
    if search.blend:
        model = RatingModel.from_state(dict(enc.vocab_sizes), params, state_from_bytes(state))
        fit = Interactions.of(enc, fit_idx)
        searched = fit if trial_idx is fit_idx else Interactions.of(enc, trial_idx)  # one copy when not sampled
        blend = _blend(model, searched, fit, Interactions.of(enc, val_idx), settings)
        state = state_to_bytes(model)
    return RankingResult(state=state, params=params, sizes=dict(enc.vocab_sizes), val_rmse=best.best_val_rmse,
                         trials=[t.summary() for t in trials], curves=[row for t in trials for row in t.curve()],
                         blend=blend, ray_tune=with_ray)


def uses_ray_tune(settings: Settings, ratings: int) -> bool:
    """Whether the search over ``ratings`` training ratings runs with Ray Tune (then inside a Ray
    session): where trials share GPUs (``tune.trials_per_gpu``: Ray's fractional GPUs), or by the
    most training examples it can take (``RaySettings.uses_ray_tune``): every trial for every
    epoch before early stopping, and the refit on all ratings when trials train on a sample."""
    search = settings.tune
    refit = search.epochs * ratings if ratings > search.trial_ratings else 0
    examples = search.samples * search.epochs * min(search.trial_ratings, ratings) + refit
    return search.trials_per_gpu > 0 or settings.ray.uses_ray_tune(examples)


def _blend(model: RatingModel, searched: Interactions, fit: Interactions, val: Interactions, settings: Settings
           ) -> dict:
    """Fit biased MF on ``searched`` (the Tune trials' ratings: all training ratings, or a sample
    on large data) for each regularisation of the grid, each with its least-squares blend weight
    on the ``val`` ratings; refit the best on all of ``fit`` when that is more (the penalty is per
    rating, so it carries); attach the blend to ``model`` and say what was tried."""
    cfg = settings.tune
    val_users, val_items, val_ratings = val.users, val.items, val.stars()
    own = predict(model, val_users, val_items)

    def fitted(ratings: Interactions, reg: float) -> tuple[float, BiasedMF, float]:
        mf = fit_biased_mf(ratings, factors=cfg.mf_factors, regularization=reg, iterations=cfg.mf_iterations,
                           seed=settings.seed)
        theirs = mf.predict(val_users, val_items)
        weight = blend_weight(own, theirs, val_ratings)
        tried.append({"regularization": reg, "ratings": len(ratings), "mf_val_rmse": rmse(theirs, val_ratings),
                      "weight": weight, "blend_val_rmse": rmse(weight * own + (1 - weight) * theirs, val_ratings)})
        return tried[-1]["blend_val_rmse"], mf, weight

    tried: list[dict] = []
    best = min((fitted(searched, reg) for reg in cfg.mf_regularization), key=lambda t: t[0])
    if len(searched) < len(fit):
        best = fitted(fit, best[1].regularization)
    model.attach_blend(best[1], best[2])
    before = rmse(own, val_ratings)
    after = _rmse(model, val_users, val_items, val_ratings)  # as served: the folded blend, clipped once
    print(f"[tune_ranking] blended with matrix factorisation: weight {best[2]:.3f}, validation RMSE "
          f"{before:.4f} -> {after:.4f}", flush=True)
    return {"weight": best[2], "regularization": best[1].regularization, "val_rmse": after, "model_val_rmse": before,
            "tried": tried}
