"""Data-parallel gradient averaging: DistributedDataParallel vs ``movierec.training.distributed``.

    .venv/bin/python benchmarks/gradients.py                     # 3 rounds x 120 s per mode
    .venv/bin/python benchmarks/gradients.py --rounds 5 --seconds 60 --no-write

Two worker processes in a gloo group train the two-tower retrieval model (sparse id tables,
lazy Adam, in-batch softmax) on synthetic ML-100K-sized ratings, as ``retrieval._train_loop``
does, with the gradients averaged either by DDP (its sparse all-reduce) or by
``movierec.training.distributed.average_gradients``. The modes alternate for ``--rounds`` rounds of
``--seconds`` each. Reported: how each run ended (a worker killed by a signal, or not), when,
and steps per second. DDP's runs are expected to crash: this is the reproduction of the worker
segfaults that moved training off DDP. Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from results import emit, markdown_table

MODES = ("ddp", "movierec")
FINISHED = "ran to the end"


def _worker(rank: int, mode: str, seconds: float, folder: str) -> None:
    """One training process; rank 0 writes the wall-clock time training starts to ``started`` and
    appends ``[elapsed, steps]`` to ``progress`` every second."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from movierec.data import synthetic
    from movierec.data.features import encode
    from movierec.models.layers import feature_tensors, index_tensor
    from movierec.models.torch_runtime import SparseDenseAdam, batches, training_threads
    from movierec.models.two_tower import TwoTower, in_batch_loss, popularity_log_q
    from movierec.training.distributed import average_gradients, broadcast_parameters

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    training_threads(1)
    enc = encode(synthetic.generate(n_users=943, n_items=1682, n_ratings=100_000, seed=0))
    user_feats, item_feats = feature_tensors(enc)
    torch.manual_seed(0)
    model = TwoTower(enc.vocab_sizes, user_feats, item_feats, 64, 128)
    net = DistributedDataParallel(model) if mode == "ddp" else model  # DDP broadcasts rank 0's weights itself
    if mode == "movierec":
        broadcast_parameters(model)
    opt = SparseDenseAdam(model, 3e-3)
    users, items = index_tensor(enc.user_idx[rank::2]), index_tensor(enc.item_idx[rank::2])
    log_q = popularity_log_q(enc.item_idx, enc.n_items)
    gen = torch.Generator().manual_seed(rank)
    start, steps, last = time.perf_counter(), 0, 0.0
    progress = Path(folder, "progress")
    if rank == 0:
        Path(folder, "started").write_text(str(time.time()))
    while True:
        for idx in batches(len(users), 256, gen, drop_last=True):
            elapsed = time.perf_counter() - start
            done = torch.tensor([float(elapsed > seconds)])
            dist.all_reduce(done)  # both workers stop after the same step
            if done.item():
                dist.destroy_process_group()
                return
            u, v = net(users[idx], items[idx])
            loss = in_batch_loss(u, v, items[idx], log_q, temperature=0.2)
            opt.zero_grad()
            loss.backward()
            if mode == "movierec":
                average_gradients(model)
            opt.step()
            steps += 1
            if rank == 0 and elapsed - last >= 1:
                last = elapsed
                with open(progress, "a") as f:
                    f.write(json.dumps([elapsed, steps]) + "\n")


def run(mode: str, seconds: float) -> dict:
    """One 2-worker run: how it ended, after how many seconds of training (the parent's clock for
    a crash, so a crash in the first second is not lost), and steps per second (from progress)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        ctx = mp.start_processes(_worker, args=(mode, seconds, folder), nprocs=2, join=False, start_method="spawn")
        ended, trained = FINISHED, seconds
        try:
            while not ctx.join():
                pass
        except mp.ProcessException as e:  # join() has already stopped the other worker
            crashed_at = time.time()
            if isinstance(e, mp.ProcessExitedException) and e.exit_code < 0:
                ended = f"worker {e.error_index} killed by {signal.Signals(-e.exit_code).name}"
            else:
                ended = f"worker {e.error_index} failed: {str(e).strip().splitlines()[-1]}"
            started = Path(folder, "started")
            trained = crashed_at - float(started.read_text()) if started.exists() else 0.0
        lines = Path(folder, "progress").read_text().splitlines() if Path(folder, "progress").exists() else []
    elapsed, steps = json.loads(lines[-1]) if lines else (0.0, 0)
    return {"mode": mode, "ended": ended, "seconds": trained, "steps": steps,
            "steps_per_s": steps / elapsed if lines else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument("--seconds", type=float, default=120, help="length of each run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = []
    for r in range(args.rounds):
        for mode in MODES:
            runs.append(run(mode, args.seconds))
            row = runs[-1]
            rate = f"{row['steps_per_s']:.0f}/s" if row["steps_per_s"] else "no progress line yet"
            print(f"[gradients] round {r + 1}/{args.rounds} {mode}: {row['ended']} after {row['seconds']:.1f} s "
                  f"of training, {row['steps']:,} steps ({rate})", flush=True)
    table = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        crashed = [r for r in mine if r["ended"] != FINISHED]
        rates = [r["steps_per_s"] for r in mine if r["steps_per_s"]]
        table.append({
            "gradients averaged by": {"ddp": "DistributedDataParallel (gloo sparse all-reduce)",
                                      "movierec": "`movierec.training.distributed` (dense all-gathers)"}[mode],
            "runs": len(mine),
            "crashed": len(crashed),
            "crashes after (s of training)": ", ".join(f"{r['seconds']:.1f}" for r in crashed) or "—",
            "steps": f"{sum(r['steps'] for r in mine):,}",
            "steps/s (median of runs)": f"{statistics.median(rates):.0f}" if rates else "—",
        })
    body = (f"Two gloo workers training the two-tower model (batch 256, ML-100K-sized synthetic data), "
            f"{args.rounds} alternating rounds of {args.seconds:.0f} s per mode; a crashed run's steps/s "
            f"counts up to its last progress line (one a second), a run that crashed before its first "
            f"has none.\n\n"
            + markdown_table(table, list(table[0])))
    emit("gradients", "## Data-parallel gradients (`benchmarks/gradients.py`)\n\n" + body, not args.no_write)


if __name__ == "__main__":
    main()
