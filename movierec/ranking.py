"""The rating model and its hyper-parameter search with Ray Tune.

The model predicts a user's star rating for a movie: global mean + user bias + movie bias + a
dot product of embeddings + an MLP over the user and movie features. Ray Tune searches its
settings with ASHA, which stops weak trials after a few epochs so more of the budget goes to
promising ones. Selection uses a validation split carved from train, never the test split.
The chosen model is then blended with biased matrix factorisation (``movierec.factorization``),
the weight fitted on the same validation ratings; the blend is folded into the model's tables, so
everything that serves the rating model (torch, ONNX) serves the blend unchanged.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from movierec.arrays import Interactions
from movierec.factorization import BiasedMF, blend_weight, fit_biased_mf
from movierec.features import Encoded
from movierec.metrics import rmse
from movierec.nn import (
    ItemEncoder,
    SparseDenseAdam,
    UserEncoder,
    batches,
    cpu_state,
    feature_tensors,
    features_from_state,
    index_tensor,
    mlp,
    state_from_bytes,
    state_to_bytes,
    training_device,
    training_threads,
)
from movierec.progress import Progress
from movierec.settings import Settings
from movierec.split import holdout


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


def combine(user: tuple[torch.Tensor, ...], item: tuple[torch.Tensor, ...], rest: nn.Module) -> torch.Tensor:
    """Predicted ratings of aligned rows of ``RatingModel.user_side`` and ``item_side`` outputs;
    ``rest`` is the rating head after its first layer."""
    (u, hu, bu), (v, hv, bv) = user, item
    return bu + bv + (u * v).sum(-1) + rest(hu + hv)[:, 0]


class RatingModel(nn.Module):
    def __init__(self, sizes: dict[str, int], user_feats, item_feats, global_mean: float, *,
                 dim: int = 32, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.user = UserEncoder(sizes, user_feats, dim)
        self.item = ItemEncoder(sizes, item_feats, dim)
        self.user_bias = nn.Embedding(sizes["user"], 1, sparse=True)
        self.item_bias = nn.Embedding(sizes["item"], 1, sparse=True)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.dim = dim
        self.head = mlp([self.user.out_dim + self.item.out_dim, hidden, 1], dropout)

    def user_side(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """What a user contributes to every score: their embedding, their share of the head's first
        layer (with its bias) and their bias. The head's first layer acts on [user; movie], so it
        splits into a user part and a movie part: scoring many pairs then needs each user and each
        movie encoded once, and per pair only an add, a ReLU and the last layer."""
        u = self.user(users, exclude)
        first = self.head[0]
        hidden = u @ first.weight[:, : self.user.out_dim].T + first.bias
        return u[:, : self.dim], hidden, self.global_mean + self.user_bias(users)[:, 0]

    def item_side(self, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        v = self.item(items)
        hidden = v @ self.head[0].weight[:, self.user.out_dim :].T
        return v[:, : self.dim], hidden, self.item_bias(items)[:, 0]

    def forward(self, users: torch.Tensor, items: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ratings; in training ``exclude=items`` keeps the rated movie out of the history."""
        return combine(self.user_side(users, exclude), self.item_side(items), self.head[1:])

    def id_l2(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the batch's user and movie id embeddings and biases: the per-rating
        L2 penalty of matrix factorisation, applied where lazy Adam cannot decay (SparseDenseAdam)."""
        rows = [self.user.id(users), self.item.id(items), self.user_bias(users), self.item_bias(items)]
        return sum(r.pow(2).sum(-1) for r in rows).mean()

    def attach_blend(self, mf: BiasedMF, weight: float) -> None:
        """Predict ``weight`` x this model + (1 - weight) x ``mf`` from now on (in ``fold``; the
        unfolded forward, which training uses, stays this model's own). Kept as buffers, so the
        state_dict (and the bundle's ``ranking.pt``) carries the blend."""
        tensors = {"blend_weight": [weight], "mf_mean": [mf.mean], "mf_user_bias": mf.user_bias,
                   "mf_item_bias": mf.item_bias, "mf_user_factors": mf.user_factors, "mf_item_factors": mf.item_factors}
        for name, value in tensors.items():
            self.register_buffer(name, torch.as_tensor(np.asarray(value, np.float32)))

    def fold(self, batch: int = 65_536) -> FoldedRatingModel:
        """This model with every user's and movie's side computed once (see FoldedRatingModel).
        A blend folds in too: the movie factors join the embedding dot product, the biases and
        means mix by the weight, and the head's last layer is scaled by it."""
        self.eval()
        sides, device = [], self.global_mean.device
        with torch.no_grad():
            for n, encode in ((self.user_bias.num_embeddings, self.user_side),
                              (self.item_bias.num_embeddings, self.item_side)):
                parts = [encode(torch.arange(i, min(i + batch, n), device=device)) for i in range(0, n, batch)]
                sides.append([torch.cat(p) for p in zip(*parts)])
            rest, mean = self.head[1:], float(self.global_mean)
            if hasattr(self, "blend_weight"):
                w = float(self.blend_weight[0])
                (u, hu, bu), (v, hv, bv) = sides
                sides = [[torch.cat([w * u, self.mf_user_factors], 1), hu,
                          w * bu + (1 - w) * (self.mf_mean[0] + self.mf_user_bias)],
                         [torch.cat([v, (1 - w) * self.mf_item_factors], 1), hv, w * bv + (1 - w) * self.mf_item_bias]]
                rest = copy.deepcopy(rest)
                rest[-1].weight.mul_(w)
                rest[-1].bias.mul_(w)
                mean = w * mean + (1 - w) * float(self.mf_mean[0])
        return FoldedRatingModel(*sides, rest, mean).eval()

    @classmethod
    def from_state(cls, sizes: dict[str, int], params: dict, state: dict) -> RatingModel:
        model = cls(sizes, features_from_state(state, "user."), features_from_state(state, "item."),
                    float(state["global_mean"]), dim=params["dim"], hidden=params["hidden"], dropout=params["dropout"])
        if "blend_weight" in state:
            _check_blend(state, sizes["user"], sizes["item"])
            model.attach_blend(BiasedMF(float(state["mf_mean"][0]), *(state[k].numpy() for k in (
                "mf_user_bias", "mf_item_bias", "mf_user_factors", "mf_item_factors")), 0.0),
                float(state["blend_weight"][0]))
        model.load_state_dict(state)
        return model.eval()


def _check_blend(state: dict[str, torch.Tensor], n_users: int, n_items: int) -> None:
    """A saved blend must fit the model it blends with: shapes that broadcast would fold into
    tables of the wrong size (an [n_users, 1] bias would become [n_users, n_users]) instead of failing."""
    k = state["mf_user_factors"].shape[-1] if "mf_user_factors" in state else -1
    shapes = {"blend_weight": (1,), "mf_mean": (1,), "mf_user_bias": (n_users,), "mf_item_bias": (n_items,),
              "mf_user_factors": (n_users, k), "mf_item_factors": (n_items, k)}
    for name, shape in shapes.items():
        if name not in state or tuple(state[name].shape) != shape or not torch.isfinite(state[name]).all():
            raise ValueError(f"the rating model's blend {name} is missing, not finite or not of shape {shape}")
    if not 0.0 <= float(state["blend_weight"][0]) <= 1.0:
        raise ValueError("the rating model's blend weight is not between 0 and 1")


class FoldedRatingModel(nn.Module):
    """A trained RatingModel with each user's and movie's side (``user_side``/``item_side``) stored
    as tables. Those sides depend only on ids and fixed features, so serving needs per pair just
    two gathers, an add and the head's last layers: about 10x faster than re-encoding at each call,
    and a graph of plain ops that exports to ONNX (EmbeddingBag with padding does not export well)."""

    def __init__(self, user: list[torch.Tensor], item: list[torch.Tensor], rest: nn.Module, global_mean: float):
        super().__init__()
        for name, t in zip(("u", "hu", "bu", "v", "hv", "bv"), [*user, *item]):
            self.register_buffer(name, t.contiguous())
        self.rest = rest
        self.global_mean = global_mean

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Star ratings of aligned (user, movie) index pairs, clipped to 0.5-5 like ``predict``."""
        user = (self.u[users], self.hu[users], self.bu[users])
        item = (self.v[items], self.hv[items], self.bv[items])
        return combine(user, item, self.rest).clamp(0.5, 5.0)

    def item_baselines(self) -> np.ndarray:
        """Every movie's expected rating from a user the model has never seen: global mean + movie bias."""
        return (self.global_mean + self.bv).clamp(0.5, 5.0).numpy()


def predict(model: RatingModel | FoldedRatingModel, users: np.ndarray, items: np.ndarray, batch: int = 262_144
            ) -> np.ndarray:
    """Predicted ratings clipped to the 0.5-5 star scale. The model is folded first (each user and
    movie encoded once), so millions of pairs cost little more than their users; callers that
    predict many times fold once and pass the folded model."""
    folded = model if isinstance(model, FoldedRatingModel) else model.fold()
    device = folded.u.device
    with torch.no_grad():
        out = [folded(index_tensor(users[i : i + batch]).to(device), index_tensor(items[i : i + batch]).to(device))
               for i in range(0, len(users), batch)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)


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
        search = fit if trial_idx is fit_idx else Interactions.of(enc, trial_idx)  # one copy when not sampled
        blend = _blend(model, search, fit, Interactions.of(enc, val_idx), settings)
        state = state_to_bytes(model)
    return RankingResult(state=state, params=params, sizes=dict(enc.vocab_sizes),
                         val_rmse=float(best.metrics_dataframe["val_rmse"].min()), trials=trials, curves=curves,
                         blend=blend)


def _blend(model: RatingModel, search: Interactions, fit: Interactions, val: Interactions, settings: Settings
           ) -> dict:
    """Fit biased MF on ``search`` (the Tune trials' ratings: all training ratings, or a sample
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
    best = min((fitted(search, reg) for reg in cfg.mf_regularization), key=lambda t: t[0])
    if len(search) < len(fit):
        best = fitted(fit, best[1].regularization)
    model.attach_blend(best[1], best[2])
    before = rmse(own, val_ratings)
    after = _rmse(model, val_users, val_items, val_ratings)  # as served: the folded blend, clipped once
    print(f"[tune_ranking] blended with matrix factorisation: weight {best[2]:.3f}, validation RMSE "
          f"{before:.4f} -> {after:.4f}", flush=True)
    return {"weight": best[2], "regularization": best[1].regularization, "val_rmse": after, "model_val_rmse": before,
            "tried": tried}

