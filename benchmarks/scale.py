"""Cost of movierec at MovieLens-20M scale on this machine. Writes its sections of RESULTS.md.

    .venv/bin/python benchmarks/scale.py                      # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/scale.py --parts data eval    # the quick parts only
    .venv/bin/python benchmarks/scale.py --sizes 1000000 --no-write

Parts:
- ``data``: ML-20M-sized ratings.csv (GroupLens layout) -> Arrow -> Parquet cache, and reloads.
- ``eval``: each test user's top-100 unseen movies by exact search, batched (one matrix product
  and partial sort per chunk of users, as the evaluator does) against a per-user loop.
- ``flow``: the whole flow on ML-20M-shaped synthetic data at each size, in an isolated Metaflow
  datastore, with the peak resident memory of every process of the run sampled twice a second;
  per-step times and training throughput (examples/s per epoch) come from the run's artifacts.
  Each size runs with ``--train-budget`` equal to its number of ratings (each model sees about
  one pass of the data), so costs are comparable across sizes; at ML-20M size that is exactly
  the default budget. A PNG plot of time and memory against size lands beside RESULTS.md.
- ``ml100k``: the default flow on MovieLens 100K, ``--repeats`` times; median wall time and per-step
  times; ``--against REF`` runs that git ref's flow in turns with this checkout's (side by side).
- ``convergence``: what the one-epoch budget costs at ML-20M size. The two-tower alone (every CPU,
  as ``pipeline.train_retrieval`` trains it outside the flow) on the synthetic data's ``tfrs``
  split, once for one epoch (the default ``--train-budget`` at this size) and once to early
  stopping; validation DCG per epoch, then both models and popularity scored on the test split.
  Once per ``--user-towers`` (each its own section).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from results import RESULTS, emit, markdown_table, median_seconds

from movierec import data, pipeline
from movierec.core import arrays
from movierec.core.settings import USER_TOWERS, RetrievalConfig, Settings
from movierec.data import synthetic
from movierec.data.features import encode
from movierec.data.split import DataSplit, split_ratings
from movierec.training import retrieval
from movierec.training.evaluation import Evaluator

REPO = Path(__file__).resolve().parents[1]
ML20M = synthetic.ML20M_SHAPE["n_ratings"]
MEASURED = "measured.json"  # wall time and memory of a kept run, so --keep can resume an interrupted benchmark
STEPS = ("start", "split", "train_retrieval", "tune_ranking", "build_index", "train_ranker", "evaluate", "publish")


def write_grouplens(dataset: data.Dataset, folder: Path) -> None:
    """The dataset as ml-20m's ratings.csv + movies.csv."""
    r = dataset.ratings.rename_columns(["userId", "movieId", "rating", "timestamp"])
    pacsv.write_csv(r, folder / "ratings.csv")
    m = dataset.items
    genres = pa.array(["|".join(g) for g in m["genres"].to_pylist()])
    titles = pa.array([f"{t} ({y})" for t, y in zip(m["title"].to_pylist(), m["year"].to_pylist())])
    pacsv.write_csv(pa.table({"movieId": m["item_id"], "title": titles, "genres": genres}), folder / "movies.csv")


def data_part(n: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ml-20m-like"
        folder.mkdir()
        write_grouplens(synthetic.ml20m_like(n), folder)
        size = (folder / "ratings.csv").stat().st_size
        parse = median_seconds(lambda: data.load_dataset(folder, cache=False), 3)
        t0 = time.perf_counter()
        data.load_dataset(folder)  # parse, validate, write the Parquet cache
        first = time.perf_counter() - t0
        reload = median_seconds(lambda: data.load_dataset(folder), 5)
    rows = [
        {"what": "CSV -> Arrow (parse + validate)", "seconds": f"{parse:.2f}", "rows/s": f"{n / parse / 1e6:.1f}M"},
        {"what": "CSV -> Parquet cache (first load)", "seconds": f"{first:.2f}", "rows/s": f"{n / first / 1e6:.1f}M"},
        {"what": "Parquet cache -> Arrow (reload)", "seconds": f"{reload:.3f}", "rows/s": f"{n / reload / 1e6:.1f}M"},
    ]
    return (f"### Data path ({n:,} ratings, ratings.csv {size / 2**20:.0f} MiB; median of 3 parses, 5 reloads)\n\n"
            + markdown_table(rows, ["what", "seconds", "rows/s"])
            + "\n\nGoals: CSV -> Parquet >= 5M rows/s; Parquet reload >= 50M rows/s.\n")


def eval_part(n: int, loop_users: int = 2000, dim: int = 64) -> str:
    enc = encode(synthetic.ml20m_like(n))
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=42)
    ev = Evaluator(enc, split)
    rng = np.random.default_rng(0)
    user_vecs = rng.normal(size=(enc.n_users, dim)).astype(np.float32)
    item_vecs = rng.normal(size=(enc.n_items, dim)).astype(np.float32)
    t0 = time.perf_counter()
    batched = ev.candidates_exact(user_vecs, item_vecs)
    batched_s = time.perf_counter() - t0
    sample = ev.users[:loop_users]

    def per_user() -> np.ndarray:
        out = np.empty((len(sample), ev.candidates), dtype=np.int64)
        for row, u in enumerate(sample):
            scores = user_vecs[u] @ item_vecs.T
            scores[ev.seen[ev.seen_ptr[u] : ev.seen_ptr[u + 1]]] = -np.inf
            out[row] = arrays.top_k(scores[None, :], ev.candidates)[0]
        return out

    def per_user_numpy() -> None:
        for u in sample[: loop_users // 4]:
            scores = user_vecs[u] @ item_vecs.T
            scores[ev.seen[ev.seen_ptr[u] : ev.seen_ptr[u + 1]]] = -np.inf
            np.argsort(-scores)[: ev.candidates]

    t0 = time.perf_counter()
    looped = per_user()
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_user_numpy()
    naive_s = time.perf_counter() - t0
    # A vector-matrix and a matrix-matrix product round differently, so near-ties may swap.
    agree = np.mean([len(np.intersect1d(a, b)) / ev.candidates for a, b in zip(looped, batched)])
    assert agree > 0.99, f"the loop and the batched search disagree ({agree:.4f} of the lists shared)"
    per_batched, per_loop, per_naive = batched_s / len(ev.users), loop_s / len(sample), naive_s / (loop_users // 4)
    rows = [
        {"method": "batched (chunks of 1,024 users)", "users": f"{len(ev.users):,}", "seconds": f"{batched_s:.1f}",
         "ms/user": f"{1000 * per_batched:.3f}"},
        {"method": "per-user loop, same primitives (vector-matrix product + torch.topk)", "users": f"{len(sample):,}",
         "seconds": f"{loop_s:.1f}", "ms/user": f"{1000 * per_loop:.3f}"},
        {"method": "per-user loop, plain numpy (product + full argsort)", "users": f"{loop_users // 4:,}",
         "seconds": f"{naive_s:.1f}", "ms/user": f"{1000 * per_naive:.3f}"},
    ]
    return (f"### Evaluation: top-100 unseen movies per test user by exact search ({n:,} ratings, "
            f"{enc.n_items:,} movies, dim {dim})\n\n" + markdown_table(rows, ["method", "users", "seconds", "ms/user"])
            + f"\n\nBatched is **{per_loop / per_batched:.1f}x** faster per user than the same primitives in a loop "
            f"and **{per_naive / per_batched:.1f}x** faster than a plain numpy loop (goal >= 10x). The loop and the "
            f"batched lists agree on {agree:.2%} of their movies (near-ties round differently in the two products).\n")


class PeakMemory:
    """Samples the resident memory of a process and all its descendants (Ray's included)."""

    def __init__(self, pid: int, interval: float = 0.5):
        import psutil

        self.root, self.interval = psutil.Process(pid), interval
        self.peak_process, self.peak_total, self.peak_name = 0, 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peak_process:
                    self.peak_process, self.peak_name = rss, " ".join(p.cmdline()[:3])[:80]
            self.peak_total = max(self.peak_total, total)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _env(repo: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that runs the code of the checkout at ``repo`` (its ``movierec``
    first on the path, ahead of the installed one)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
            "USERNAME": os.environ.get("USERNAME", "bench"), "PYTHONUNBUFFERED": "1", **extra}


def run_flow(options: list[str], root: Path, log: Path, what: str, repo: Path = REPO) -> dict:
    """One flow run of the checkout at ``repo`` with ``options`` in an isolated datastore at ``root``;
    its wall time and memory peaks."""
    env = _env(repo, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root), METAFLOW_HOME=str(root))
    cmd = [sys.executable, str(repo / "flows" / "recommender_flow.py"), "--no-pylint", "run",
           "--index-dir", str(root / "pypi"), *options]
    print(f"[scale] flow on {what} (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=repo)
        mem = PeakMemory(proc.pid)
        code = proc.wait()
        mem.stop()
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"the flow failed on {what} (exit {code}); see {log}")
    measured = {"wall": wall, "peak_process": mem.peak_process, "peak_name": mem.peak_name,
                "peak_total": mem.peak_total}
    (root / MEASURED).write_text(json.dumps(measured))
    return measured


def flow_figures(root: Path, repo: Path = REPO) -> dict:
    """Step times, throughput and quality of the latest run in the datastore at ``root``, made by the
    checkout at ``repo`` (whose classes its artifacts unpickle to).

    Read in a child process: the Metaflow client fixes its datastore root at first use, so one
    process cannot read several isolated datastores.
    """
    # Metaflow reads its datastore root when first imported (this script imports it at its top).
    out = subprocess.run([sys.executable, __file__, "--figures-of", str(root)], check=True, capture_output=True,
                         text=True, env=_env(repo, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_figures(root: Path) -> dict:
    """The body of :func:`flow_figures`, run in the child process."""
    from metaflow import Flow, namespace

    namespace(None)
    run = Flow("RecommenderFlow").latest_run
    steps = {s: [t for t in run[s]] for s in STEPS}
    seconds = {s: max((t.finished_at - t.created_at).total_seconds() for t in ts) for s, ts in steps.items()}
    retrieval = run["train_retrieval"].task.data.retrieval
    ranking = run["tune_ranking"].task.data.ranking
    report = {r["model"]: r for r in run["evaluate"].task.data.metrics}
    ours = report["two-stage (exact retrieval)"]
    stats = run["start"].task.data.data_stats
    trial_speed = [c["examples_per_s"] for c in ranking.curves if c["trial"] != "refit"]
    refit_speed = [c["examples_per_s"] for c in ranking.curves if c["trial"] == "refit"]
    return {
        "run": run.id, "users": stats["users"], "items": stats["items"], "seconds": seconds,
        "retrieval_eps": [h["examples_per_s"] for h in retrieval.history],
        "ranking_trial_eps": statistics.median(trial_speed) if trial_speed else None,
        "ranking_refit_eps": refit_speed,
        "top100": ours["top100"], "ndcg": ours["ndcg@10"],
        "pop_ndcg": report["popularity baseline"]["ndcg@10"],
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] / 1e6 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, [r["wall"] / 60 for r in rows], "o-", label="whole flow")
    for step in ("train_retrieval", "tune_ranking", "evaluate"):
        a.plot(n, [r["seconds"][step] / 60 for r in rows], "o--", label=step)
    a.set(xlabel="ratings (millions)", ylabel="minutes", title="Wall time")
    a.legend()
    b.plot(n, [r["peak_process"] / 2**30 for r in rows], "o-", label="largest process")
    b.plot(n, [r["peak_total"] / 2**30 for r in rows], "o--", label="all processes")
    b.set(xlabel="ratings (millions)", ylabel="GiB", title="Peak resident memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def flow_part(sizes: list[int], keep: Path | None) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = keep or Path(tmp)
        for n in sizes:
            root = base / f"flow-{n}"
            root.mkdir(parents=True, exist_ok=True)
            if (root / MEASURED).exists():
                print(f"[scale] {n:,} ratings: reusing the run kept in {root}", flush=True)
                run = json.loads((root / MEASURED).read_text())
            else:
                run = run_flow(["--synthetic-ratings", str(n), "--train-budget", str(n)], root, root / "flow.log",
                               f"{n:,} ratings")
            rows.append({"n": n, **run, **flow_figures(root)})
            print(f"[scale] {n:,} ratings: {run['wall']:.0f} s, peak {run['peak_process'] / 2**30:.2f} GiB", flush=True)
    table = []
    for r in rows:
        eps = r["retrieval_eps"]
        table.append({
            "ratings": f"{r['n']:,}", "users": f"{r['users']:,}", "movies": f"{r['items']:,}",
            "wall": f"{r['wall'] / 60:.1f} min",
            "peak RSS (largest process)": f"{r['peak_process'] / 2**30:.2f} GiB",
            "peak RSS (all)": f"{r['peak_total'] / 2**30:.2f} GiB",
            **{s: f"{r['seconds'][s]:.0f} s" for s in STEPS},
            "retrieval examples/s per epoch": ", ".join(f"{x / 1e3:.0f}k" for x in eps),
            "ranking examples/s (trial median / refit)": f"{(r['ranking_trial_eps'] or 0) / 1e3:.0f}k / "
            + (", ".join(f"{x / 1e3:.0f}k" for x in r["ranking_refit_eps"]) or "no refit"),
            "top100": f"{r['top100']:.4f}", "NDCG@10 (popularity)": f"{r['ndcg']:.4f} ({r['pop_ndcg']:.4f})",
        })
    plot(rows, RESULTS.parent / "scale.png")
    largest = max(rows, key=lambda r: r["n"])
    return ("### The whole flow at growing sizes (synthetic ML-20M-shaped data, `--train-budget` = ratings)\n\n"
            + markdown_table(table, list(table[0]))
            + f"\n\n![time and memory against size](scale.png)\n\nLargest process at {largest['n']:,} ratings: "
            f"`{largest['peak_name']}`. Goals at ML-20M size: <= 20 min, <= 8 GiB per process; retrieval >= 200k "
            "and ranking >= 500k examples/s. Steps overlap: train_retrieval (one CPU of the two) and tune_ranking "
            "(both) run at the same time, so their throughput is what each gets beside the other.\n")


def printed_metrics(log: Path) -> str:
    """The metrics table the ``evaluate`` step printed, without Metaflow's line prefixes."""
    lines = [line.split("] ", 1)[1] for line in log.read_text().splitlines() if "/evaluate/" in line and "] " in line]
    start = next((i for i, line in enumerate(lines) if line.startswith("model ")), None)
    if start is None:
        return ""
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("candidate recall")), len(lines) - 1)
    return "\n".join(lines[start : end + 1])


def checkout(ref: str, into: Path) -> Path:
    """The tree of this repository's git ``ref`` unpacked at ``into``: the other side of a comparison."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def ml100k_part(repeats: int, against: str | None) -> str:
    """Wall time of the default flow on MovieLens 100K (what `make run` runs after set-up), per step,
    and the metrics table its last run printed; with ``against`` (a git ref), that ref's flow too,
    the two run in turns on the same machine, and the ratio of their medians."""
    data_dir = str(data.fetch_ml100k())
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"this checkout": REPO, **({against: checkout(against, Path(tmp) / "against")} if against else {})}
        walls: dict[str, list[float]] = {side: [] for side in sides}
        steps: dict[str, list[dict]] = {side: [] for side in sides}
        for i in range(repeats):
            for n, (side, repo) in enumerate(sides.items()):  # in turns: both meet the machine as it is
                root = Path(tmp) / f"run-{n}-{i}"
                root.mkdir()
                walls[side].append(run_flow(["--data-dir", data_dir], root, root / "flow.log", f"ML-100K ({side})",
                                            repo)["wall"])
                steps[side].append(flow_figures(root, repo)["seconds"])
                print(f"[scale] ML-100K run {i + 1}, {side}: {walls[side][-1]:.1f} s", flush=True)
        tables = {side: printed_metrics(Path(tmp) / f"run-{n}-{repeats - 1}" / "flow.log")
                  for n, side in enumerate(sides)}
    rows = [{"code": side, "runs": repeats, "median wall": f"{statistics.median(walls[side]):.1f} s",
             "min": f"{min(walls[side]):.1f} s", "max": f"{max(walls[side]):.1f} s",
             **{step: f"{statistics.median(run[step] for run in steps[side]):.1f} s" for step in STEPS}}
            for side in sides]
    ratio = ""
    if against:
        times = statistics.median(walls["this checkout"]) / statistics.median(walls[against])
        ratio = f"\n\nThis checkout takes **{times:.2f}x** the wall time of `{against}` (medians, runs in turns)."
    shown = "".join(f"\nWhat the last run of {side} printed in `evaluate` (`tfrs` protocol, seed 42):\n\n"
                    f"```\n{t}\n```\n" for side, t in tables.items() if t)
    return ("### The default flow on MovieLens 100K (after set-up)\n\n"
            + markdown_table(rows, list(rows[0])) + ratio
            + "\n\nThe whole `python flows/recommender_flow.py run` process, from launch to exit, each run in a fresh "
            "datastore; a step's time is its task's, from creation to finish (train_retrieval and tune_ranking run at "
            "the same time). Goal: <= 45 s.\n" + shown)


def convergence_part(n: int, user_tower: str = "features") -> str:
    """The two-tower with ``user_tower`` trained for one epoch and to early stopping on ``n``
    synthetic ratings, both scored on the test split beside popularity."""
    cfg = RetrievalConfig(user_tower=user_tower)
    enc = encode(synthetic.ml20m_like(n, seed=42))
    data_split = DataSplit(enc, pipeline.split_for(enc, "tfrs", 42))
    evaluator = Evaluator(enc, data_split.split)
    pop = evaluator.factorized_row("popularity", np.ones((enc.n_users, 1), np.float32), evaluator.popularity[:, None])
    rows, curves = [], {}
    budgets = {"one epoch (default --train-budget)": n, "to early stopping": n * cfg.max_epochs()}
    with tempfile.TemporaryDirectory() as storage:
        for name, budget in budgets.items():
            start = time.perf_counter()
            result = pipeline.train_retrieval(data_split, Settings(train_budget=budget, retrieval=cfg),
                                              os.path.join(storage, name))
            seconds = time.perf_counter() - start
            row = evaluator.factorized_row(name, *result.embeddings())
            best = max(result.history, key=lambda h: h["val_dcg"])
            rows.append({"training": name, "epochs": len(result.history), "kept epoch": best["epoch"],
                         "seconds": f"{seconds:.0f}", "validation DCG": f"{best['val_dcg']:.4f}",
                         **{k: f"{row[k]:.4f}" for k in ("top100", "ndcg@10", "r@10")}})
            curves[name] = result.history
            print(f"[scale] two-tower ({user_tower} user tower), {name}: {len(result.history)} epochs, "
                  f"{seconds:.0f} s, "
                  f"NDCG@10 {row['ndcg@10']:.4f}", flush=True)
    rows.append({"training": "popularity baseline", "epochs": "", "kept epoch": "", "seconds": "",
                 "validation DCG": "", **{k: f"{pop[k]:.4f}" for k in ("top100", "ndcg@10", "r@10")}})
    curve = [{"epoch": h["epoch"], "validation DCG": f"{h['val_dcg']:.4f}", "loss": f"{h['loss']:.4f}",
              "seconds": f"{h['seconds']:.0f}"} for h in curves["to early stopping"]]
    one, full = rows[0], rows[1]
    # the patience and epoch cap the run to early stopping trained with (the ratings tower's follow the data's size)
    settings = Settings(train_budget=budgets["to early stopping"], retrieval=cfg)
    loop = retrieval.loop_config(settings, cfg, len(retrieval.validation_split(data_split.split.train, settings)[0]),
                                 enc.vocab_sizes, workers=cfg.workers, threads=1)
    return (f"### One epoch against early stopping at {n:,} ratings (two-tower alone, {user_tower} user tower, "
            f"every CPU)\n\n"
            f"{enc.n_users:,} users, {enc.n_items:,} movies; `tfrs` split (seed 42); validation: 5% of train; "
            f"patience {loop['patience']} epochs, at most {loop['epochs']}.\n\n"
            + markdown_table(rows, list(rows[0])) + "\n\nValidation DCG per epoch of the run to early stopping:\n\n"
            + markdown_table(curve, list(curve[0]))
            + f"\n\nTraining to early stopping took {full['seconds']} s against {one['seconds']} s for one epoch "
            f"and moved test NDCG@10 from {one['ndcg@10']} to {full['ndcg@10']} (popularity {pop['ndcg@10']:.4f}).\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["data", "eval", "flow", "ml100k", "convergence"],
                        default=["data", "eval", "flow", "ml100k", "convergence"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000_000, 5_000_000, ML20M],
                        help="ratings per flow run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the ML-100K flow (median reported)")
    parser.add_argument("--against", metavar="REF", help="ml100k: also run the flow of this git ref (e.g. a commit "
                        "of main) in turns with this checkout's, and report the ratio of their medians")
    parser.add_argument("--ratings", type=int, default=ML20M, help="size of the data, eval and convergence parts")
    parser.add_argument("--keep", type=Path, help="keep the flow runs' datastores and logs here; sizes already "
                        "measured there are reused, so an interrupted benchmark resumes")
    parser.add_argument("--user-towers", nargs="+", choices=USER_TOWERS, default=list(USER_TOWERS),
                        help="convergence: the two-tower's user towers to train (each writes its own section)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--figures-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.figures_of:
        print(json.dumps(read_figures(args.figures_of)))
        return 0
    if "data" in args.parts:
        emit("scale-data", data_part(args.ratings), not args.no_write)
    if "eval" in args.parts:
        emit("scale-eval", eval_part(args.ratings), not args.no_write)
    if "flow" in args.parts:
        emit("scale-flow", flow_part(sorted(args.sizes), args.keep), not args.no_write)
    if "ml100k" in args.parts:
        emit("scale-ml100k", ml100k_part(args.repeats, args.against), not args.no_write)
    if "convergence" in args.parts:
        for tower in args.user_towers:
            emit("scale-convergence" + ("" if tower == "features" else f"-{tower}"),
                 convergence_part(args.ratings, tower), not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
