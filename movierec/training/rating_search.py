"""The rating model's hyper-parameter search with Ray Tune, and its blend with biased matrix factorisation.

Kept apart from ``movierec.models.rating_model`` (the model itself) so the model reads without Ray.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

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
)


def search_space() -> dict:
    from ray import tune

    return {
        "dim": tune.choice([32, 64, 128]),
        "hidden": tune.choice([32, 64, 128]),
        "dropout": tune.uniform(0.0, 0.4),
        "lr": tune.loguniform(1e-3, 5e-3),
        "weight_decay": tune.loguniform(1e-5, 5e-4),  # dense layers
        "l2": tune.loguniform(1e-2, 3e-1),  # id embeddings and biases, per rating (see RatingModel.id_l2)
        "batch_size": tune.choice([512, 1024]),  # smaller batches cost more per example than they gain
    }


def _rmse(model: RatingModel, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> float:
    return rmse(predict(model, users, items), ratings)


@dataclass(frozen=True)
class TrialPlan:
    """How a Tune trial runs, apart from the hyper-parameters Tune chooses and the data."""

    max_epochs: int
    seed: int
    threads: int  # CPUs Ray gives the trial
    trials_per_gpu: int = 0  # > 0: each trial gets that share of one GPU and trains there

    def resources(self) -> dict[str, float]:
        """What Ray reserves for one trial."""
        return {"cpu": self.threads, **({"gpu": 1 / self.trials_per_gpu} if self.trials_per_gpu else {})}


def _trainable(params: dict, data: dict, plan: TrialPlan) -> None:
    """One Tune trial: train, report validation RMSE every epoch, checkpoint only on improvement.

    Checkpointing only improvements makes a trial's latest checkpoint its best one, which is what
    the driver keeps.
    """
    from ray import tune

    training_threads(plan.threads)
    device = training_device(plan.resources().get("gpu", 0))
    torch.manual_seed(plan.seed)
    model = RatingModel(data["sizes"], data["user_features"], data["item_features"], data["global_mean"],
                        dim=params["dim"], hidden=params["hidden"], dropout=params["dropout"]).to(device)
    opt = SparseDenseAdam(model, params["lr"], params["weight_decay"])
    users, items = index_tensor(data["users"]).to(device), index_tensor(data["items"]).to(device)
    ratings = torch.tensor(data["ratings"], device=device)  # a copy: arrays from Ray's object store are read-only
    gen = torch.Generator().manual_seed(plan.seed)
    best = float("inf")
    trial = tune.get_context().get_trial_id()
    for epoch in range(plan.max_epochs):
        model.train()
        total, start = 0.0, time.perf_counter()
        progress = Progress(len(users), f"[tune_ranking] trial {trial} epoch {epoch + 1}/{plan.max_epochs}")
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
        metrics = {"val_rmse": val, "train_rmse": float(np.sqrt(total / len(users))), "epoch": epoch + 1,
                   "examples_per_s": speed}
        print(f"[tune_ranking] trial {trial} epoch {epoch + 1}/{plan.max_epochs} "
              f"val_rmse {val:.4f} ({speed:,.0f} examples/s)", flush=True)
        if val < best:
            best = val
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(cpu_state(model), os.path.join(tmp, "model.pt"))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)


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

    def model(self) -> RatingModel:
        return RatingModel.from_state(self.sizes, self.params, state_from_bytes(self.state))


def _search(data: dict, plan: TrialPlan, space: dict, storage_path: str, *, name: str, num_samples: int,
            max_concurrent: int, scheduler: object | None):
    """One Tune run of ``_trainable`` over ``space``; every trial gets ``plan.threads`` CPUs."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, data=data, plan=plan), plan.resources()),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_rmse", mode="min", num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent, scheduler=scheduler),
        # A trial checkpoints only when it improves, so its latest checkpoint is its best: the
        # one kept (an ML-100K run kept ~40 files, 41 MB, for ever).
        run_config=tune.RunConfig(storage_path=storage_path, name=name, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} Tune trial(s) failed: {grid.errors[0]}")
    return grid


def _record(result, label: int | str, trials: list[dict], curves: list[dict]) -> None:
    """Append a trial's settings and best score to ``trials`` and its learning curve to ``curves``."""
    df = result.metrics_dataframe
    trials.append({"trial": label, **{k: result.config[k] for k in sorted(result.config)},
                   "epochs": int(df["epoch"].max()), "best_val_rmse": float(df["val_rmse"].min())})
    curves += [{"trial": label, "epoch": int(e), "val_rmse": float(v), "examples_per_s": float(x)}
               for e, v, x in zip(df["epoch"], df["val_rmse"], df["examples_per_s"])]


def tune_ranking(enc: Encoded, train_idx: np.ndarray, settings: Settings, storage_path: str) -> RankingResult:
    """Search the rating model with Ray Tune + ASHA (call inside a Ray session): ``settings.tune``
    trials, ``settings.ray.num_cpus`` of them at a time.

    Trials train on at most ``settings.tune.trial_ratings`` ratings (a uniform sample), so the
    search costs the same at any data size; when that is a sample, the best settings are then
    trained once on all the ratings, for as many epochs as the best trial needed but within
    ``settings.train_budget``. ``settings.retrieval.history`` adds each user's rated movies to the
    user features (see UserEncoder; it halves throughput for about 0.002 of RMSE on ML-100K).
    """
    from ray.tune.schedulers import ASHAScheduler

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

    scheduler = ASHAScheduler(max_t=search.epochs, grace_period=min(2, search.epochs), reduction_factor=3)
    grid = _search(data(trial_idx), TrialPlan(search.epochs, seed, 1, search.trials_per_gpu), search_space(),
                   storage_path, name="ranking", num_samples=search.samples, max_concurrent=concurrency,
                   scheduler=scheduler)
    best = grid.get_best_result(metric="val_rmse", mode="min", scope="all")
    trials, curves = [], []
    for i, r in enumerate(grid):
        _record(r, i, trials, curves)
    if len(trial_idx) < len(fit_idx):
        df = best.metrics_dataframe
        epochs = settings.epochs_for(int(df["epoch"][df["val_rmse"].idxmin()]), len(fit_idx))
        print(f"[tune_ranking] refitting the best settings on all {len(fit_idx):,} ratings for {epochs} epoch(s)",
              flush=True)
        best = _search(data(fit_idx), TrialPlan(epochs, seed, concurrency, search.trials_per_gpu), dict(best.config),
                       storage_path,
                       name="ranking-refit", num_samples=1, max_concurrent=1, scheduler=None,
                       ).get_best_result(metric="val_rmse", mode="min", scope="all")
        _record(best, "refit", trials, curves)
    with best.checkpoint.as_directory() as d, open(os.path.join(d, "model.pt"), "rb") as f:
        state = f.read()
    params = {k: best.config[k] for k in ("dim", "hidden", "dropout")}
    blend = {}
    if search.blend:
        model = RatingModel.from_state(dict(enc.vocab_sizes), params, state_from_bytes(state))
        fit = Interactions.of(enc, fit_idx)
        searched = fit if trial_idx is fit_idx else Interactions.of(enc, trial_idx)  # one copy when not sampled
        blend = _blend(model, searched, fit, Interactions.of(enc, val_idx), settings)
        state = state_to_bytes(model)
    return RankingResult(state=state, params=params, sizes=dict(enc.vocab_sizes),
                         val_rmse=float(best.metrics_dataframe["val_rmse"].min()), trials=trials, curves=curves,
                         blend=blend)


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
