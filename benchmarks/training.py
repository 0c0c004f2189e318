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

Gradient exchange between Ray Train workers is not in these steps: ``benchmarks/gradients.py``
measures it with two workers. ``--device cuda`` runs the same steps on a GPU (the peak is then
the GPU's, measured on 8192² matrices, and steps are timed between CUDA synchronisations; the
operator profile is the CPU run's only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from results import emit, markdown_table
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from movierec.core.settings import RetrievalConfig
from movierec.data import synthetic
from movierec.data.features import encode
from movierec.models.layers import feature_tensors, index_tensor
from movierec.models.rating_model import RatingModel
from movierec.models.torch_runtime import SparseDenseAdam, compiled, training_threads
from movierec.models.two_tower import TwoTower, in_batch_loss, popularity_log_q

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
    towers = TwoTower(enc.vocab_sizes, user_feats, item_feats, cfg.embedding_dim(), cfg.hidden).to(device)
    log_q = popularity_log_q(enc.item_idx, enc.n_items).to(device)
    loss_fn = compiled(in_batch_loss, "[training]") if setup.compiled else in_batch_loss

    def retrieval_loss(idx: torch.Tensor) -> torch.Tensor:
        u, v = towers(users[idx], items[idx])
        return loss_fn(u, v, items[idx], log_q, temperature=cfg.temperature, negatives=setup.negatives)

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
        return nn.functional.mse_loss(rating(u, i, i), ratings[idx]) + 0.05 * rating.id_l2(u, i)

    return Trainer("rating model (dim 64, hidden 64)", rating, rating_loss, SparseDenseAdam(rating, 3e-3, 1e-4))


def flops_per_example(trainer: Trainer, batch: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        loss = trainer.loss(batch)
        loss.backward()
    trainer.optimizer.zero_grad()
    return counter.get_total_flops() / len(batch)


def throughput(trainer: Trainer, n: int, batch_size: int, steps: int, *, device: torch.device, warmup: int = 5
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a Ray worker's CPUs)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per configuration")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384],
                        help="the rating model's batch sizes (the two-tower's configurations are fixed)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU")
    parser.add_argument("--section", default="training", help="the RESULTS.md section this run writes")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    training_threads(args.threads)
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"one process, {args.threads} torch threads")

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
        speed = throughput(trainer, len(users), batch_size, args.steps, device=device)
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
