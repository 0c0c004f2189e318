"""The retrieval models' distributed training with Ray Train: the two-tower model
(``movierec.models.two_tower``) and LightGCN (``movierec.models.lightgcn``) train in the same loop, with
early stopping on validation pairs carved from train.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from movierec.core.arrays import Interactions, csr_rows
from movierec.core.progress import Progress
from movierec.core.settings import RetrievalConfig, Settings
from movierec.data.features import Encoded
from movierec.data.split import holdout
from movierec.models.layers import feature_tensors, index_tensor, ragged_rows
from movierec.models.lightgcn import EmbeddingTables, LightGCN, normalized_adjacency
from movierec.models.torch_runtime import (
    SparseDenseAdam,
    batches,
    bf16_autocast,
    compiled,
    cpu_state,
    state_from_bytes,
    training_device,
    training_threads,
    training_threads_here,
)
from movierec.models.two_tower import TwoTower, catalogue_loss, in_batch_loss, popularity_log_q, ratings_tower
from movierec.training.distributed import (
    average_gradients,
    broadcast_parameters,
    distinct_over_workers,
    mean_over_workers,
)


@dataclass
class RetrievalResult:
    """What the flow keeps: weights as bytes, the settings to rebuild the model, the loss curve."""

    state: bytes
    config: RetrievalConfig
    sizes: dict[str, int]
    history: list[dict[str, float]] = field(default_factory=list)
    nodes: int = 1  # Ray nodes its workers trained on
    ray_train: bool = True  # False: one worker trained in the step's process (RaySettings.uses_ray_train)
    search: list[dict] = field(default_factory=list)  # the trials that chose its settings (retrieval_search)
    # the epoch cap (after --train-budget) and patience it trained with, which the ratings tower's
    # defaults resolve by the data's size (0: not recorded, runs before they were)
    epochs: int = 0
    patience: int = 0

    def model(self) -> TwoTower | EmbeddingTables:
        state = state_from_bytes(self.state)
        if self.config.model == "lightgcn":
            return EmbeddingTables.from_state(state)
        return TwoTower.from_state(self.sizes, self.config, state)

    def embeddings(self, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors, item vectors) for every user and item, float32."""
        m = self.model()
        with torch.no_grad():
            users = [m.user_vectors(torch.arange(i, min(i + batch, self.sizes["user"])))
                     for i in range(0, self.sizes["user"], batch)]
            items = [m.item_vectors(torch.arange(i, min(i + batch, self.sizes["item"])))
                     for i in range(0, self.sizes["item"], batch)]
        return torch.cat(users).numpy(), torch.cat(items).numpy()


def validation_dcg(model: TwoTower | LightGCN, users: torch.Tensor, items: torch.Tensor, n_items: int, *,
                   seen_rows: np.ndarray, seen_items: np.ndarray) -> float:
    """Mean 1/log2(rank + 2) of each held-out (user, movie) pair's movie among the movies the user
    has not rated (as recommendations are made): a cutoff-free, top-weighted ranking score for
    early stopping (1.0 = always ranked first). ``seen_rows``/``seen_items`` (rows ascending) say
    which movies pair ``row``'s user rated in training; scoring those too stops training far too
    early, as the model rightly ranks watched movies high."""
    model.eval()
    device = users.device
    with torch.no_grad():
        item_vecs = model.item_vectors(torch.arange(n_items, device=device))
        total = 0.0
        bounds = np.searchsorted(seen_rows, np.arange(0, len(users) + 1024, 1024))
        for c, i in enumerate(range(0, len(users), 1024)):
            scores = model.user_vectors(users[i : i + 1024]) @ item_vecs.T
            a, b = bounds[c], bounds[c + 1]
            scores[index_tensor(seen_rows[a:b] - i).to(device), index_tensor(seen_items[a:b]).to(device)] = \
                float("-inf")
            target = scores.gather(1, items[i : i + 1024, None])
            ranks = (scores > target).sum(1).to(torch.float64)
            total += float((1.0 / torch.log2(ranks + 2)).sum())
    model.train()
    return total / max(1, len(users))


def _quiet_report_notices() -> None:
    """Ray 2.60 logs every ray.train.report at INFO under a logger named by its file path, which
    LoggingConfig does not reach; silence just that logger so per-epoch progress stays readable."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # other Ray versions: nothing to silence
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _build(cfg: RetrievalConfig, sizes: dict[str, int], data: dict) -> TwoTower | LightGCN:
    """The untrained model ``cfg.model`` names; LightGCN's graph is every training pair (not a shard)."""
    if cfg.model == "lightgcn":
        graph = normalized_adjacency(Interactions(data["users"], data["items"], sizes["user"], sizes["item"]))
        return LightGCN(sizes["user"], sizes["item"], graph, cfg.embedding_dim(), cfg.layers)
    user_feats = {k: index_tensor(v) for k, v in data["user_features"].items()}
    item_feats = {k: index_tensor(v) for k, v in data["item_features"].items()}
    return TwoTower(sizes, user_feats, item_feats, cfg.embedding_dim(), cfg.hidden, ratings=ratings_tower(cfg))


def _serving_state(model: TwoTower | LightGCN) -> dict:
    """What ``RetrievalResult.model`` rebuilds from: the towers' weights, or LightGCN's final
    tables, on the CPU whatever device trained them."""
    return cpu_state(model.tables() if isinstance(model, LightGCN) else model)


def worker_resources(cpus: int, gpus: int) -> dict[str, float]:
    """What Ray reserves for each training worker: its CPUs, and its GPUs when it asks for any."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


@dataclass(frozen=True)
class _Worker:
    """Where one copy of the training loop runs: its rank among ``world`` workers, its device, the
    id of its Ray node (0 outside Ray), and what it does with each epoch's row before the next."""

    rank: int
    world: int
    device: torch.device
    node: int
    report: Callable[[dict], None]


class _Steps:
    """An epoch's training steps over this worker's share of ``self.users`` rows, ``batch`` a step;
    the subclasses say what a row is and its loss."""

    users: torch.Tensor
    batch: int
    steps: int  # equal on every worker: each step is a collective

    def batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        return batches(len(self.users), self.batch, gen, drop_last=True)[: self.steps]


class _PairSteps(_Steps):
    """Training steps over this worker's share of the (user, movie) pairs: each pair's movie
    against the batch's shared negatives (``in_batch_loss``)."""

    def __init__(self, config: dict, data: dict, worker: _Worker, cfg: RetrievalConfig, label: str):
        rank, world, device, self.batch, self.cfg = worker.rank, worker.world, worker.device, config["batch"], cfg
        self.users = index_tensor(data["users"][rank::world]).to(device)
        self.items = index_tensor(data["items"][rank::world]).to(device)
        self.log_q = popularity_log_q(data["items"], config["sizes"]["item"]).to(device)
        self.steps = len(data["items"]) // world // self.batch
        self.compiles = cfg.compiles(len(data["items"]))
        self.loss_fn = compiled(in_batch_loss, label) if self.compiles else in_batch_loss
        self.described = f"batch {self.batch}, {min(self.batch, cfg.negatives)} shared negatives"

    def loss(self, model: TwoTower | LightGCN, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The batch ``idx``'s loss and how many pairs it learned from."""
        u, v = model(self.users[idx], self.items[idx])
        return self.loss_fn(u, v, self.items[idx], self.log_q, temperature=self.cfg.temperature,
                            negatives=self.cfg.negatives), len(idx)


class _UserSteps(_Steps):
    """Training steps over this worker's share of the users who have training pairs (the ratings
    tower): each user's rated movies against the whole catalogue (``catalogue_loss``)."""

    def __init__(self, config: dict, data: dict, worker: _Worker, cfg: RetrievalConfig, label: str):
        rank, world, device, self.batch, self.cfg = worker.rank, worker.world, worker.device, config["batch"], cfg
        self.n_items = config["sizes"]["item"]
        fit = Interactions(data["users"], data["items"], config["sizes"]["user"], self.n_items)
        indptr, items = fit.csr()
        self.indptr, self.rated = index_tensor(indptr).to(device), index_tensor(items).to(device)
        raters = np.flatnonzero(np.diff(indptr))
        self.users = index_tensor(raters[rank::world]).to(device)
        self.steps = len(raters) // world // self.batch
        self.compiles = False  # one matmul and a softmax: nothing to fuse
        self.described = f"batch {self.batch} users, softmax over all {self.n_items:,} movies"

    def loss(self, model: TwoTower | LightGCN, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The batch ``idx``'s loss and how many pairs it learned from."""
        users = self.users[idx]
        rated, lengths = ragged_rows(self.indptr, self.rated, users)
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
        u = model.user_vectors(users)
        v = model.item_vectors(torch.arange(self.n_items, device=users.device))
        return catalogue_loss(u, v, rows, rated, temperature=self.cfg.temperature), len(rated)


def _epochs(config: dict, data: dict, worker: _Worker) -> tuple[TwoTower | LightGCN, list[dict], int]:
    """The training loop, the same in a Ray Train worker and in one process: (the model with the
    weights of its best validation epoch, one row per epoch, the nodes the workers trained on)."""
    cfg, seed, epochs, batch = RetrievalConfig(**config["cfg"]), config["seed"], config["epochs"], config["batch"]
    rank, world, device = worker.rank, worker.world, worker.device
    label = f"[{config.get('label', 'train_retrieval')}]"  # what its progress lines start with
    torch.manual_seed(seed)  # identical initial weights on every worker
    model = _build(cfg, config["sizes"], data).to(device)
    broadcast_parameters(model)
    opt = SparseDenseAdam(model, cfg.learning_rate(batch), cfg.weight_decay)
    step = (_UserSteps if cfg.per_user else _PairSteps)(config, data, worker, cfg, label)
    bf16 = bf16_autocast(cfg.precision, device)
    nodes = distinct_over_workers(worker.node, device)
    if rank == 0:
        print(f"{label} {world} worker(s) x {config['threads']} thread(s) on {device.type} "
              f"({nodes} node{'s' if nodes > 1 else ''}{'' if worker.node else ', in this process'}), "
              f"{step.described}, {'bf16' if bf16 else 'fp32'}{', compiled loss' if step.compiles else ''}", flush=True)
    gen = torch.Generator().manual_seed(seed + rank)
    history = []
    val_users, val_items = index_tensor(data["val_users"]).to(device), index_tensor(data["val_items"]).to(device)
    val_seen_rows, val_seen_items = data["val_seen"]
    best, best_state, stale = -1.0, None, 0
    for epoch in range(epochs):
        start, total, examples = time.perf_counter(), 0.0, 0
        model.train()
        progress = Progress(len(data["items"]), f"{label} epoch {epoch + 1}/{epochs}")
        for idx in step.batches(gen):
            idx = idx.to(device)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss, pairs = step.loss(model, idx)
            opt.zero_grad()
            loss.backward()
            average_gradients(model)
            opt.step()
            total += loss.item()
            examples += pairs * world
            if rank == 0:
                progress.update(pairs * world)
        mean = mean_over_workers(torch.tensor([total / max(1, step.steps)], device=device))
        seconds = time.perf_counter() - start
        # Every worker holds the same weights after the averaged steps and scores the same
        # validation pairs, so all of them reach the same stopping decision.
        score = validation_dcg(model, val_users, val_items, config["sizes"]["item"], seen_rows=val_seen_rows,
                               seen_items=val_seen_items)
        row = {"epoch": epoch + 1, "loss": float(mean), "val_dcg": score, "seconds": seconds,
               "examples_per_s": examples / max(seconds, 1e-9)}
        history.append(row)
        if score > best:
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        stop = stale >= config["patience"] or epoch + 1 == epochs
        if rank == 0:
            print(f"{label} epoch {epoch + 1}/{epochs} loss {row['loss']:.4f} "
                  f"val DCG {score:.4f} ({row['examples_per_s']:,.0f} examples/s)"
                  + (f"; stopping, keeping epoch {epoch + 1 - stale}" if stop else ""), flush=True)
        if stop:
            break
        worker.report(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, history, nodes


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: its shard of the data, gradients averaged over the workers
    (``movierec.training.distributed``, not DDP: see there why); rank 0 reports the kept weights
    as the checkpoint."""
    import ray
    import ray.train
    import ray.train.torch

    _quiet_report_notices()
    ctx = ray.train.get_context()
    training_threads(config["threads"])
    # the GPU Ray Train gave this worker (each worker on a node its own), after checking torch sees one
    device = ray.train.torch.get_device() if training_device(config["cfg"]["gpus_per_worker"]).type == "cuda" \
        else torch.device("cpu")
    # Ray node ids, not Ray Train's node ranks: those count IP addresses, and nodes may share one
    node = int(ray.get_runtime_context().get_node_id()[:15], 16)
    worker = _Worker(ctx.get_world_rank(), ctx.get_world_size(), device, node, ray.train.report)
    model, history, nodes = _epochs(config, ray.get(config["data"]), worker)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if worker.rank == 0:
            torch.save(_serving_state(model), os.path.join(tmp, "model.pt"))
            with open(os.path.join(tmp, "history.json"), "w") as f:
                json.dump({"epochs": history, "nodes": nodes}, f)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(history[-1] if history else {}, checkpoint=checkpoint)


def train_trial(config: dict, data: dict, report: Callable[[dict], None]) -> None:
    """The training loop as the one worker of a search trial (``movierec.training.retrieval_search``),
    in a process of its own: each epoch's row goes to ``report`` as the epoch ends (the last one
    once training stops), so a scheduler can stop the trial there."""
    training_threads(config["threads"])
    worker = _Worker(0, 1, training_device(config["cfg"]["gpus_per_worker"]), 0, report)
    _, history, _ = _epochs(config, data, worker)
    report(history[-1])


def _train_here(config: dict, data: dict) -> tuple[bytes, list[dict]]:
    """The training loop as one worker in this process (``RaySettings.uses_ray_train`` says when):
    (the kept weights as ``torch.save`` bytes, one row per epoch). Training's torch settings
    (``training_threads``) hold for its duration only: the process goes on as it was (torch's
    default, subnormals kept), as it did beside a Ray Train worker."""
    with training_threads_here(config["threads"]):
        worker = _Worker(0, 1, training_device(config["cfg"]["gpus_per_worker"]), 0, lambda row: None)
        model, history, _ = _epochs(config, data, worker)
    out = io.BytesIO()
    torch.save(_serving_state(model), out)
    return out.getvalue(), history


# The most recent rated movies per user the ratings tower reads: all of them in practice (ML-20M's
# users rated 144 on average; a few thousands), bounding only the heaviest raters' rows, as each
# kept rating is an entry of the model's state.
RATINGS_HISTORY = 2000
MAX_VALIDATION = 5000  # validation pairs: enough for a stable score at any data size


def validation_split(train_idx: np.ndarray, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) ratings: what the retrieval model trains on, and the pairs it is early-
    stopped on, which the second stage is also tuned on (``movierec.models.second_stage``); together all of
    train. The validation pairs are the first ``val_fraction`` (at most ``MAX_VALIDATION``) of the
    same seeded permutation the rating model's carve-out (``holdout``) takes its larger share of,
    so the rating model never trains on them either; and a random sample, not the first rows of
    a file that is sorted by user."""
    if settings.retrieval.val_fraction > settings.tune.val_fraction:
        raise ValueError(f"retrieval.val_fraction ({settings.retrieval.val_fraction}) must not exceed "
                         f"tune.val_fraction ({settings.tune.val_fraction}): the rating model would train on "
                         "the pairs the second stage is tuned on")
    return holdout(train_idx, settings.retrieval.val_fraction, settings.seed, cap=MAX_VALIDATION)


def training_data(enc: Encoded, fit_idx: np.ndarray, val_idx: np.ndarray, cfg: RetrievalConfig, *,
                  seen_idx: np.ndarray | None = None) -> dict:
    """What every copy of the training loop reads (through Ray's object store when it runs in Ray):
    the ``fit_idx`` pairs to learn, the ``val_idx`` pairs to stop on and which movies their users
    rated (in ``seen_idx``, by default ``fit_idx``: a search's trials learn from a sample of the fit
    pairs but know all of them), and the features ``cfg.model`` takes (LightGCN learns from the
    interactions alone; ``--history`` and the ratings user tower read the ``seen_idx`` ratings)."""
    seen_idx = fit_idx if seen_idx is None else seen_idx
    history = seen_idx if cfg.history or cfg.per_user else None
    user_feats, item_feats = (feature_tensors(enc, history, RATINGS_HISTORY if cfg.per_user else cfg.max_history)
                              if cfg.model == "two_tower" else ({}, {}))
    fit = Interactions.of(enc, fit_idx, stars=False)
    seen_ptr, seen = Interactions.of(enc, seen_idx, stars=False).csr() if seen_idx is not fit_idx else fit.csr()
    return {
        "users": fit.users,
        "items": fit.items,
        "val_users": enc.user_idx[val_idx],
        "val_items": enc.item_idx[val_idx],
        "val_seen": csr_rows(seen_ptr, seen, enc.user_idx[val_idx]),
        "user_features": {k: v.numpy() for k, v in user_feats.items()},
        "item_features": {k: v.numpy() for k, v in item_feats.items()},
    }


def loop_config(settings: Settings, cfg: RetrievalConfig, pairs: int, sizes: dict[str, int], *, workers: int,
                threads: int) -> dict:
    """The training loop's settings for ``cfg`` on ``pairs`` training pairs shared by ``workers``
    workers of ``threads`` CPUs each: its epochs within ``settings.train_budget`` and its batch."""
    # a larger batch would leave an epoch no step
    per_worker = max(1, (min(pairs, sizes["user"]) if cfg.per_user else pairs) // workers)
    batch = min(cfg.batch_for(per_worker), per_worker)
    steps = per_worker // batch
    return {"cfg": asdict(cfg), "seed": settings.seed, "epochs": settings.epochs_for(cfg.max_epochs(steps), pairs),
            "patience": cfg.stop_after(steps), "sizes": dict(sizes), "threads": threads, "batch": batch}


def train(enc: Encoded, train_idx: np.ndarray, settings: Settings, storage_path: str, *, name: str = "retrieval",
          spread: bool = False) -> RetrievalResult:
    """Train the retrieval model ``settings.retrieval`` describes on ``train_idx`` with Ray Train
    (inside a Ray session), each worker on its share of ``settings.ray.num_cpus``, for as many
    epochs as ``settings.train_budget`` allows, or as one worker in this process where Ray Train
    would spread nothing (``RaySettings.uses_ray_train``; no Ray session needed then); ``spread``:
    the workers over as many of the cluster's nodes as they can (Ray Train packs them onto the
    fewest by default)."""
    cfg = settings.retrieval
    cpus_per_worker = max(1, settings.ray.num_cpus // cfg.workers)
    fit_idx, val_idx = validation_split(train_idx, settings)
    data = training_data(enc, fit_idx, val_idx, cfg)
    config = loop_config(settings, cfg, len(fit_idx), enc.vocab_sizes, workers=cfg.workers, threads=cpus_per_worker)
    if not settings.ray.uses_ray_train(cfg.workers):
        state, history = _train_here(config, data)
        return RetrievalResult(state=state, config=cfg, sizes=dict(enc.vocab_sizes), history=history, ray_train=False,
                               epochs=config["epochs"], patience=config["patience"])
    import ray
    from ray.train import ControllerError, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={**config, "data": ray.put(data)},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                     resources_per_worker=worker_resources(cpus_per_worker, cfg.gpus_per_worker),
                                     placement_strategy="SPREAD" if spread else "PACK"),
        # NCCL's collectives run on the GPUs; gloo's on the CPU (movierec.training.distributed uses dense
        # collectives only, which both implement)
        torch_config=TorchConfig(backend="nccl" if cfg.gpus_per_worker else "gloo"),
        # Per-report INFO notices would drown the one progress line per epoch printed above, and on
        # a busy machine the controller's autoscaling requests time out with a WARNING traceback
        # (GetTimeoutError) that is harmless on a fixed-size cluster: Ray Train says only errors.
        # A worker group that cannot start (more workers than the cluster has CPUs) is retried by
        # Ray Train for ever by default; fail on the first time-out instead, saying why.
        run_config=RunConfig(storage_path=storage_path, name=name, logging_config=LoggingConfig("ERROR"),
                             failure_config=FailureConfig(controller_failure_limit=0)),
    )
    try:
        result = trainer.fit()
    except ControllerError as exc:
        if type(exc.controller_failure).__name__ != "WorkerGroupStartupTimeoutError":
            raise
        cpus, gpus = (ray.cluster_resources().get(kind, 0) for kind in ("CPU", "GPU"))
        if cfg.workers * cfg.gpus_per_worker > gpus:
            why = (f"{cfg.workers} retrieval workers of {cfg.gpus_per_worker} GPU each do not fit a Ray cluster with "
                   f"{gpus:g} GPUs: set retrieval.gpus_per_worker (--gpus-per-worker) to 0 to train on CPU, or "
                   "join a cluster with GPUs (--ray-address)")
        elif cfg.workers * cpus_per_worker > cpus:
            why = (f"{cfg.workers} retrieval workers of {cpus_per_worker} CPU each do not fit a Ray cluster with "
                   f"{cpus:g} CPUs: lower retrieval.workers (--retrieval-workers) or give Ray more CPUs "
                   "(--num-cpus, or more nodes with --ray-address)")
        else:
            why = (f"its {cfg.workers} workers did not start within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s "
                   "unless set): the cluster's CPUs are taken by other work, or its nodes are unreachable")
        raise RuntimeError(f"Ray Train could not start the retrieval training: {why}") from None
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "model.pt"), "rb") as f:
            state = f.read()
        with open(os.path.join(d, "history.json")) as f:
            run = json.load(f)
    return RetrievalResult(state=state, config=cfg, sizes=dict(enc.vocab_sizes), history=run["epochs"],
                           nodes=run["nodes"], epochs=config["epochs"], patience=config["patience"])
