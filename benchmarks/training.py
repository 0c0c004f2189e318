"""Training speed against this machine's limit. Writes the `training` section of RESULTS.md.

    .venv/bin/python benchmarks/training.py                  # ML-20M-sized tables (a few minutes)
    .venv/bin/python benchmarks/training.py --steps 20 --no-write
    python3 benchmarks/training.py --device cuda --section training-gpu

For the two-tower retrieval model and the rating model, on one process with ``--threads``
threads (what one Ray worker gets) and id tables of ML-20M's size (138,493 users, 26,744
movies; the ratings are a synthetic sample of that shape, as only the batches matter here):

- this machine's measured matmul peak (fp32 and bf16 ``torch.mm`` of 2048² matrices);
- each model's FLOPs per training example (forward + backward, counted by torch's
  ``FlopCounterMode``; the optimizer's elementwise work is not matmul work and is left out);
- examples/s per configuration (median of the timed steps after warm-up) and the GFLOP/s that
  makes, as a share of the fp32 and bf16 peaks. The two-tower's configurations run from what the
  flow trained with before issue 16 (whole-batch negatives, fp32) to its ML-20M default now;
  the rating model's over ``--batch-sizes`` in fp32 and bf16;
- where a step's time goes (``torch.profiler``), before and after for the two-tower: the step's
  phases (forward, loss, backward, optimizer) and the most expensive operators.

``--rating-vs REF`` (section ``training-rating``) instead times the rating model's Tune trial as
it trains, side by side with the same trial of git ``REF`` (e.g. main): ML-100K's ratings, one
validation carve-out, the same settings and seed (each trial with its own random state), old
and new alternating epoch by epoch so a busy machine slows both alike; each side's examples/s
per epoch (medians) and its validation RMSE after the same epochs.

Gradient exchange between Ray Train workers is not in these steps: ``benchmarks/gradients.py``
measures it with two workers. ``--device cuda`` runs the same steps on a GPU (the peak is then
the GPU's, measured on 8192² matrices, and steps are timed between CUDA synchronisations; the
operator profile is the CPU run's only).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from results import emit, markdown_table
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from movierec import ranking, synthetic
from movierec.data import load_dataset
from movierec.features import encode
from movierec.metrics import rmse
from movierec.nn import SparseDenseAdam, bf16_autocast, compiled, feature_tensors, index_tensor, training_threads
from movierec.ranking import RatingModel
from movierec.retrieval import TwoTower, in_batch_loss, popularity_log_q
from movierec.settings import RetrievalConfig

SAMPLE_RATINGS = 2_000_000  # batches are drawn from these; the tables have ML-20M's size regardless


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (CUDA runs asynchronously); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 7) -> float:
    """GFLOP/s of an n x n x n ``torch.mm`` (median of ``repeats``, after one warm-up)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


@dataclass
class Trainer:
    """One model's training step over batches of (user, movie[, stars]) examples."""

    name: str
    model: nn.Module
    loss: Callable[[torch.Tensor], torch.Tensor]  # batch indices -> loss
    optimizer: SparseDenseAdam
    bf16: bool = False  # forward in bfloat16 autocast (matmuls in bf16, the loss in fp32)

    def step(self, idx: torch.Tensor) -> None:
        with record_function("forward + loss"), torch.autocast(idx.device.type, torch.bfloat16, enabled=self.bf16):
            loss = self.loss(idx)
        with record_function("backward"):
            self.optimizer.zero_grad()
            loss.backward()
        with record_function("optimizer"):
            self.optimizer.step()


@dataclass(frozen=True)
class Setup:
    """A two-tower training configuration: pairs per step, shared negatives (None: the whole batch,
    as before issue 16), bf16 autocast, compiled loss."""

    batch: int
    negatives: int | None
    bf16: bool
    compiled: bool
    note: str = ""

    def label(self) -> str:
        negatives = "whole batch" if self.negatives is None else f"{self.negatives:,}"
        return (f"batch {self.batch:,}, negatives {negatives}, {'bf16' if self.bf16 else 'fp32'}"
                f"{', compiled loss' if self.compiled else ''}")


# What the flow trained with before issue 16, steps towards today's ML-20M default, and one more.
TWO_TOWER_SETUPS = [
    Setup(1024, None, False, False, "before: every size"),
    Setup(1024, 1024, True, False, "now: ML-100K"),
    Setup(4096, None, False, False),
    Setup(8192, 1024, False, False),
    Setup(8192, 1024, True, False),
    Setup(8192, 1024, True, True),
    Setup(4096, 1024, True, True, "now: ML-20M"),
    Setup(4096, 512, True, True),
]
# On a GPU a step of a few thousand pairs is launch overhead, not arithmetic: larger batches with the
# same 1,024 shared negatives keep the FLOPs per example and spread that overhead further.
GPU_TWO_TOWER_SETUPS = [
    Setup(4096, 1024, True, True, "CPU's ML-20M default"),
    Setup(8192, 1024, True, True),
    Setup(16384, 1024, False, False),
    Setup(16384, 1024, True, True, "GPU's ML-20M default"),
    Setup(65536, 1024, True, True),
    Setup(65536, 2048, True, True),
]


def two_tower(enc, users: torch.Tensor, items: torch.Tensor, setup: Setup) -> Trainer:
    """The two-tower model as the flow trains it, in ``setup``'s configuration."""
    torch.manual_seed(0)
    device = users.device
    user_feats, item_feats = feature_tensors(enc)
    cfg = RetrievalConfig()
    towers = TwoTower(enc.vocab_sizes, user_feats, item_feats, cfg.dim, cfg.hidden).to(device)
    log_q = popularity_log_q(enc.item_idx, enc.n_items).to(device)
    loss_fn = compiled(in_batch_loss, "[training]") if setup.compiled else in_batch_loss

    def retrieval_loss(idx: torch.Tensor) -> torch.Tensor:
        u, v = towers(users[idx], items[idx])
        return loss_fn(u, v, items[idx], log_q, cfg.temperature, setup.negatives)

    return Trainer(f"two-tower retrieval, {setup.label()}", towers, retrieval_loss,
                   SparseDenseAdam(towers, cfg.learning_rate(setup.batch), cfg.weight_decay), setup.bf16)


def rating_trainer(enc, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> Trainer:
    """The rating model as the flow's Tune trials train it by default."""
    torch.manual_seed(0)
    user_feats, item_feats = feature_tensors(enc)
    rating = RatingModel(enc.vocab_sizes, user_feats, item_feats, float(ratings.mean()), dim=64, hidden=64,
                         dropout=0.1).to(users.device)

    def rating_loss(idx: torch.Tensor) -> torch.Tensor:
        u, i = users[idx], items[idx]
        pred, penalty = rating.fit_terms(u, i)
        return nn.functional.mse_loss(pred, ratings[idx]) + 0.05 * penalty

    return Trainer("rating model (dim 64, hidden 64)", rating, rating_loss, SparseDenseAdam(rating, 3e-3, 1e-4))


def flops_per_example(trainer: Trainer, batch: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        loss = trainer.loss(batch)
        loss.backward()
    trainer.optimizer.zero_grad()
    return counter.get_total_flops() / len(batch)


def throughput(trainer: Trainer, n: int, batch_size: int, steps: int, device: torch.device, warmup: int = 5
               ) -> float:
    """Median examples/s of ``steps`` steps after ``warmup`` untimed ones."""
    gen = torch.Generator().manual_seed(1)
    times = []
    for s in range(warmup + steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(device)
        synchronize(device)
        start = time.perf_counter()
        trainer.step(idx)
        synchronize(device)
        if s >= warmup:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def breakdown(trainer: Trainer, n: int, batch_size: int, steps: int) -> tuple[list[dict], list[dict]]:
    """(phases, top operators): milliseconds per step and share of the step, from torch.profiler."""
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, n, (batch_size,), generator=gen) for _ in range(steps)]
    trainer.step(batches[0])
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches:
            trainer.step(idx)
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    events = prof.key_averages()
    phases = [{"phase": e.key, "ms per step": f"{e.cpu_time_total / 1e3 / steps:.2f}",
               "share": f"{e.cpu_time_total / 1e3 / steps / wall_ms:.0%}"}
              for e in events if e.key in ("forward + loss", "backward", "optimizer")]
    phases.append({"phase": "whole step (wall, profiler on)", "ms per step": f"{wall_ms:.2f}", "share": "100%"})
    ops = sorted((e for e in events if e.key.startswith("aten::") or "Backward" in e.key),
                 key=lambda e: -e.self_cpu_time_total)[:10]
    top = [{"operator": e.key, "self ms per step": f"{e.self_cpu_time_total / 1e3 / steps:.2f}",
            "share": f"{e.self_cpu_time_total / 1e3 / steps / wall_ms:.0%}", "calls per step": e.count // steps}
           for e in ops]
    return phases, top


RATING_TRIAL = {"dim": 64, "hidden": 64, "dropout": 0.1, "lr": 3e-3, "weight_decay": 1e-4, "l2": 0.05}


def cpu_model() -> str:
    """The CPU's model name (figures from different CPUs are not comparable)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def modules_at(ref: str, tmp: Path) -> tuple[ModuleType, ModuleType]:
    """``movierec.nn`` and ``movierec.ranking`` as git ``ref`` has them, importable side by side
    with today's (as ``movierec_<ref>.nn``/``.ranking``; every other module is today's)."""
    package = "movierec_" + "".join(c if c.isalnum() else "_" for c in ref)
    (tmp / package).mkdir()
    (tmp / package / "__init__.py").write_text("")
    for name in ("nn", "ranking"):
        source = subprocess.run(["git", "show", f"{ref}:movierec/{name}.py"], check=True, capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parent).stdout
        (tmp / package / f"{name}.py").write_text(source.replace("from movierec.nn import",
                                                                 f"from {package}.nn import"))
    sys.path.insert(0, str(tmp))
    return importlib.import_module(f"{package}.nn"), importlib.import_module(f"{package}.ranking")


def old_epoch(model: nn.Module, opt: object, data: tuple[torch.Tensor, ...], batch_size: int, l2: float,
              gen: torch.Generator, old_nn: ModuleType) -> None:
    """One epoch of the trial loop as ``ranking._trainable`` ran it before issue 28 (per-batch
    index gathers, the L2 term's own lookups, torch's SparseAdam)."""
    users, items, ratings = data
    model.train()
    for idx in old_nn.batches(len(users), batch_size, gen):
        u, i = users[idx], items[idx]
        mse = nn.functional.mse_loss(model(u, i, i), ratings[idx])
        loss = mse + l2 * model.id_l2(u, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mse.item()


def rating_vs(args: argparse.Namespace) -> str:
    """The rating model's Tune trial, ``args.rating_vs`` against today's, alternating (see the docstring)."""
    from movierec.split import holdout

    enc = encode(load_dataset(Path(args.data), cache=False))
    fit_idx, val_idx = holdout(np.arange(len(enc.rating)), 0.1, 42)
    user_feats, item_feats = feature_tensors(enc)
    data = tuple(index_tensor(a[fit_idx]) for a in (enc.user_idx, enc.item_idx)) + (
        torch.as_tensor(enc.rating[fit_idx], dtype=torch.float32),)
    val = enc.user_idx[val_idx], enc.item_idx[val_idx], enc.rating[val_idx]
    p = RATING_TRIAL
    tmp = Path(tempfile.mkdtemp(prefix="rating-vs-"))
    old_nn, old_ranking = modules_at(args.rating_vs, tmp)
    sides = {}
    for label, module, optimizer in ((args.rating_vs, old_ranking, old_nn.SparseDenseAdam),
                                     ("this tree", ranking, SparseDenseAdam)):
        torch.manual_seed(42)
        model = module.RatingModel(enc.vocab_sizes, user_feats, item_feats, float(data[2].mean()), p["dim"],
                                   p["hidden"], p["dropout"])
        sides[label] = {"module": module, "model": model, "opt": optimizer(model, p["lr"], p["weight_decay"]),
                        "gen": torch.Generator().manual_seed(42), "rng": torch.get_rng_state(), "speeds": [],
                        "cpu": [], "rmse": []}
    for epoch in range(args.rating_epochs):
        for label, side in sides.items() if epoch % 2 == 0 else reversed(sides.items()):
            torch.set_rng_state(side["rng"])  # each trial its own dropout masks, as in its own process
            start, cpu = time.perf_counter(), time.process_time()
            if side["module"] is ranking:
                ranking.train_epoch(side["model"], side["opt"], data, args.rating_batch, p["l2"], side["gen"])
            else:
                old_epoch(side["model"], side["opt"], data, args.rating_batch, p["l2"], side["gen"], old_nn)
            side["speeds"].append(len(data[0]) / (time.perf_counter() - start))
            side["rng"] = torch.get_rng_state()
            side["cpu"].append(len(data[0]) / (time.process_time() - cpu))
            side["rmse"].append(rmse(side["module"].predict(side["model"], *val[:2]), val[2]))
            print(f"[training] {label} epoch {epoch + 1}: {side['speeds'][-1]:,.0f} examples/s "
                  f"({side['cpu'][-1]:,.0f} per CPU second), "
                  f"validation RMSE {side['rmse'][-1]:.4f}", flush=True)
    old, new = sides.values()
    ratio = statistics.median(new["speeds"]) / statistics.median(old["speeds"])
    cpu_ratio = statistics.median(new["cpu"]) / statistics.median(old["cpu"])
    rows = [{"code": label, "examples/s (median of epochs)": f"{statistics.median(s['speeds']):,.0f}",
             "slowest, fastest epoch": f"{min(s['speeds']):,.0f}, {max(s['speeds']):,.0f}",
             "examples per CPU second (median)": f"{statistics.median(s['cpu']):,.0f}",
             f"validation RMSE after {args.rating_epochs} epochs": f"{s['rmse'][-1]:.4f}",
             "best validation RMSE": f"{min(s['rmse']):.4f}"} for label, s in sides.items()]
    curve = [{"epoch": e + 1, **{f"{label} RMSE": f"{s['rmse'][e]:.4f}" for label, s in sides.items()}}
             for e in range(args.rating_epochs)]
    return (f"## The rating model's Tune trial, `{args.rating_vs}` against this tree "
            f"(`benchmarks/training.py --rating-vs {args.rating_vs} --threads {args.threads}`)\n\n"
            f"CPU: **{cpu_model()}**; one process, {args.threads} torch thread(s)"
            f"{' (what a Tune trial gets)' if args.threads == 1 else ''}; "
            f"bf16 autocast would be {'on' if bf16_autocast('auto', torch.device('cpu')) else 'off'} here "
            f"(`bf16_autocast('auto')`); torch {torch.__version__}. ML-100K ({len(fit_idx):,} training ratings, "
            f"{len(val_idx):,} validation), batch {args.rating_batch:,}, "
            f"{', '.join(f'{k} {v:g}' for k, v in p.items())}, seed 42 for both; the two trials alternate "
            f"epoch by epoch on the same machine. **{ratio:.2f}x** the examples/s of `{args.rating_vs}` "
            f"({cpu_ratio:.2f}x per CPU second of the process, which other processes on a shared machine "
            f"disturb less).\n\n"
            + markdown_table(rows, list(rows[0])) + "\n\n" + markdown_table(curve, list(curve[0])) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a Ray worker's CPUs)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per configuration")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384],
                        help="the rating model's batch sizes (the two-tower's configurations are fixed)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU")
    parser.add_argument("--section", default="training", help="the RESULTS.md section this run writes")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--rating-vs", metavar="REF", help="instead: time the rating model's Tune trial against "
                        "git REF's (e.g. main), side by side, into the training-rating section (with --threads 1: "
                        "what the flow gives each trial)")
    parser.add_argument("--rating-epochs", type=int, default=8, help="epochs of each --rating-vs trial")
    parser.add_argument("--rating-batch", type=int, default=1024, help="batch size of the --rating-vs trials")
    parser.add_argument("--data", default="data/ml-100k", help="the --rating-vs trials' MovieLens directory")
    args = parser.parse_args(argv)
    training_threads(args.threads)
    if args.rating_vs:
        emit("training-rating", rating_vs(args), write=not args.no_write)
        return 0
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{cpu_model()}, one process, {args.threads} torch threads")

    peak = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    print(f"[training] matmul peak ({where}): fp32 {peak['fp32']:,.0f} GFLOP/s, bf16 {peak['bf16']:,.0f} GFLOP/s",
          flush=True)
    shape = synthetic.ML20M_SHAPE
    enc = encode(synthetic.generate(shape["n_users"], shape["n_items"], SAMPLE_RATINGS, seed=0))
    users, items = index_tensor(enc.user_idx).to(device), index_tensor(enc.item_idx).to(device)
    ratings = torch.as_tensor(enc.rating, dtype=torch.float32).to(device)
    rows, profiles = [], []

    def measure(trainer: Trainer, batch_size: int, note: str = "", counted: Trainer | None = None) -> None:
        """One row; FLOPs are counted on ``counted`` (an uncompiled twin), as compiled code hides them."""
        flops = flops_per_example(counted or trainer, torch.randint(0, len(users), (batch_size,), device=device))
        speed = throughput(trainer, len(users), batch_size, args.steps, device)
        achieved = flops * speed / 1e9
        rows.append({"model": trainer.name, "flow default": note, "MFLOP per example": f"{flops / 1e6:.2f}",
                     "examples/s": f"{speed:,.0f}", "GFLOP/s": f"{achieved:.1f}",
                     "share of fp32 peak": f"{achieved / peak['fp32']:.1%}",
                     "share of bf16 peak": f"{achieved / peak['bf16']:.1%}"})
        print(f"[training] {trainer.name}: {speed:,.0f} examples/s, {achieved:.1f} GFLOP/s", flush=True)

    def profiled(trainer: Trainer, batch_size: int) -> None:
        if device.type == "cpu":
            phases, top = breakdown(trainer, len(users), batch_size, max(10, args.steps // 3))
            profiles.append(f"#### {trainer.name}\n\n"
                            + markdown_table(phases, ["phase", "ms per step", "share"]) + "\n\n"
                            + markdown_table(top, ["operator", "self ms per step", "share", "calls per step"]))

    for setup in GPU_TWO_TOWER_SETUPS if device.type == "cuda" else TWO_TOWER_SETUPS:
        trainer = two_tower(enc, users, items, setup)
        twin = two_tower(enc, users, items, replace(setup, compiled=False)) if setup.compiled else None
        measure(trainer, setup.batch, setup.note, twin)
        if setup.note:  # the profile before and after
            profiled(trainer, setup.batch)
    rating = rating_trainer(enc, users, items, ratings)
    for batch_size in args.batch_sizes:
        for bf16 in (False, True):
            rating.bf16 = bf16
            rating.name = f"rating model (dim 64, hidden 64), batch {batch_size:,}, {'bf16' if bf16 else 'fp32'}"
            measure(rating, batch_size, "now: Tune trials" if (batch_size, bf16) == (1024, False) else "")
    rating.bf16, rating.name = False, f"rating model (dim 64, hidden 64), batch {args.batch_sizes[0]:,}, fp32"
    profiled(rating, args.batch_sizes[0])
    text = (f"## Training speed against the machine's limit (`benchmarks/training.py --device {args.device}`)\n\n"
            f"{where}; torch {torch.__version__}; id tables of ML-20M's size ({shape['n_users']:,} users, "
            f"{shape['n_items']:,} movies); median of {args.steps} timed steps. Matmul peak here: "
            f"**fp32 {peak['fp32']:,.0f} GFLOP/s**, bf16 {peak['bf16']:,.0f} GFLOP/s. FLOPs count forward + "
            f"backward matmul work (`FlopCounterMode`).\n\n" + markdown_table(rows, list(rows[0])) + "\n")
    if profiles:
        text += ("\n### Where a step's time goes (torch.profiler)\n\n" + "\n\n".join(profiles)
                 + "\n\nPhases overlap in the operator table: an operator's self time is counted once, inside the "
                 "phase that ran it.\n")
    emit(args.section, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
