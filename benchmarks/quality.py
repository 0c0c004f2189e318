"""Model quality on MovieLens 100K under each evaluation protocol, beside baselines trained in the
same run and the published figures, as mean ± std over seeds. Writes benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/quality.py                       # 3 protocols x 3 seeds (~25 min on 2 cores)
    .venv/bin/python benchmarks/quality.py --protocols msr --seeds 42
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import baselines
from results import emit, markdown_table, mean_std

from movierec import data, pipeline
from movierec.core.arrays import Interactions
from movierec.core.protocols import PROTOCOLS
from movierec.core.settings import CANDIDATES, RetrievalConfig, Settings, TuneConfig
from movierec.data.features import encode
from movierec.data.split import DataSplit
from movierec.training.evaluation import Evaluator

WARM = [name for name, p in PROTOCOLS.items() if not p.cold]  # the coldstart protocol: benchmarks/coldstart.py
COLUMNS = ["top10", "top50", "top100", "rmse", "mae", "ndcg@10", "p@10", "r@10"]
OURS = "two-stage (exact retrieval)"
GRAPH = "LightGCN retrieval only"
LIGHTGCN_EPOCHS = 40
RUNS_FILE = Path(__file__).resolve().parent / ".quality-runs.jsonl"
GOALS = [  # (protocol, model row, metric, target, better): issue 15's, and LightGCN's of issue 7
    ("msr", OURS, "ndcg@10", 0.50, "higher"),
    ("tfrs", OURS, "ndcg@10", 0.46, "higher"),
    ("tfrs", OURS, "top100", 0.43, "higher"),
    ("tfrs", OURS, "rmse", 0.90, "lower"),
    ("msr", GRAPH, "ndcg@10", 0.42, "higher"),
]
# LightGCN against the two-tower model, retrieval alone, on every protocol: (metric) at least as good
VERSUS = ("r@10", "ndcg@10")


def evaluate_once(enc, protocol: str, seed: int, args: argparse.Namespace, storage: str
                  ) -> tuple[list[dict], dict[str, float]]:
    """Every row for one protocol and seed: the flow's report for the two-tower model, LightGCN's
    two-stage and retrieval-only rows (same sources and rating model, its own ranker), and the
    baselines; and the two-tower run's candidate recall of each source and of their union."""
    split = pipeline.split_for(enc, protocol, seed)
    data_split = DataSplit(enc, split)
    settings = Settings(protocol=protocol, seed=seed, retrieval=RetrievalConfig(history=args.history),
                        tune=TuneConfig(samples=args.tune_samples, epochs=args.tune_epochs))
    storage = os.path.join(storage, f"{protocol}-{seed}")  # each run its own Ray storage: none reloads another's
    ranking = pipeline.tune_ranking(data_split, settings, storage)
    sources = pipeline.fit_sources(data_split, settings)
    evaluator = Evaluator(enc, split)
    rows = []
    for model in ("two_tower", "lightgcn"):
        epochs = args.lightgcn_epochs if model == "lightgcn" else args.retrieval_epochs
        run = replace(settings, retrieval=RetrievalConfig(model=model, epochs=epochs, workers=2, history=args.history,
                                                          temperature=args.temperature))
        retrieval = pipeline.train_retrieval(data_split, run, os.path.join(storage, model))
        stages = pipeline.stages(retrieval, pipeline.build_index(retrieval, run), sources, ranking)
        stages.ranker = pipeline.train_ranker(data_split, stages, run)
        report = evaluator.run(stages)
        if model == "two_tower":
            rows += report.rows
            recall = {**report.recall, "union size": report.union_size}
        else:  # its two-stage row by name, and its retrieval-only row
            rows += [{**report.rows[0], "model": "two-stage (LightGCN, exact retrieval)"}, report.rows[2]]
    train = Interactions.of(enc, split.train)
    test_u, test_i = enc.user_idx[split.test], enc.item_idx[split.test]
    for name, model in [
        ("global mean + biases", baselines.biases(train)),
        ("matrix factorisation", baselines.matrix_factorization(train, seed=seed)),
    ]:
        rows.append(evaluator.factorized_row(name, model.user_vecs, model.item_vecs, model.predict(test_u, test_i)))
    return rows, recall


def finished_runs(path: Path, settings: dict) -> dict[tuple[str, int], dict]:
    """The runs in ``path`` made with ``settings`` (which name the code's commit), by (protocol, seed)."""
    if not path.exists():
        return {}
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["protocol"], r["seed"]): r for r in runs if r["settings"] == settings}


def commit() -> str:
    """The checked-out commit, "+dirty" when files differ: runs of other code are not reused."""
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def mean_of(values: list[float | None]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", default=WARM, choices=WARM,
                        help="the protocols of rated movies (coldstart: benchmarks/coldstart.py)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--retrieval-epochs", type=int, default=RetrievalConfig().max_epochs())
    parser.add_argument("--lightgcn-epochs", type=int, default=LIGHTGCN_EPOCHS,
                        help="most LightGCN epochs (as flows/configs/lightgcn.json)")
    parser.add_argument("--tune-samples", type=int, default=10)
    parser.add_argument("--tune-epochs", type=int, default=15)
    parser.add_argument("--temperature", type=float, default=RetrievalConfig.temperature)
    parser.add_argument("--history", action="store_true", help="models also see each user's rated movies (flow's "
                        "--history)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--runs-file", type=Path, default=RUNS_FILE,
                        help="each finished protocol and seed is appended here, and runs with the same settings "
                             "found there are reused, so an interrupted benchmark resumes (delete it to start over)")
    args = parser.parse_args(argv)

    enc = encode(data.load_dataset(data.fetch_ml100k()))
    results: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    order: dict[str, list[str]] = defaultdict(list)
    started = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k not in ("protocols", "seeds", "no_write", "runs_file")}
    settings["commit"] = commit()
    recalls: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    done = finished_runs(args.runs_file, settings)
    with tempfile.TemporaryDirectory() as storage:
        for protocol in args.protocols:
            for seed in args.seeds:
                t0 = time.perf_counter()
                if (protocol, seed) in done:
                    rows, recall = done[(protocol, seed)]["rows"], done[(protocol, seed)]["recall"]
                    print(f"[quality] {protocol} seed {seed}: kept from {args.runs_file}", flush=True)
                else:
                    rows, recall = evaluate_once(enc, protocol, seed, args, storage)  # Ray sessions of its own
                    with open(args.runs_file, "a") as f:
                        f.write(json.dumps({"settings": settings, "protocol": protocol, "seed": seed,
                                            "rows": rows, "recall": recall}, default=float) + "\n")
                for name, value in recall.items():
                    recalls[protocol][name].append(value)
                for row in rows:
                    if row["model"] not in order[protocol]:
                        order[protocol].append(row["model"])
                    for c in COLUMNS:
                        results[(protocol, row["model"])][c].append(row.get(c))
                print(f"[quality] {protocol} seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)

    sections = [f"## Model quality on ML-100K\n\n`benchmarks/quality.py` — seeds {args.seeds}, retrieval "
                f"{args.retrieval_epochs} epochs (LightGCN {args.lightgcn_epochs}), "
                f"Tune {args.tune_samples} trials x {args.tune_epochs} epochs; "
                f"mean ± std over seeds; {time.perf_counter() - started:.0f} s in all."]
    for protocol in args.protocols:
        p = PROTOCOLS[protocol]
        rows = [{"model": m, **{c: mean_std(results[(protocol, m)][c]) for c in COLUMNS}} for m in order[protocol]]
        table = markdown_table(rows, ["model"] + COLUMNS)
        sections.append(f"### Protocol `{protocol}`\n\n{p.description}.\n\n{table}")
        size = mean_of(recalls[protocol].pop("union size"))
        recall_rows = [{"candidates": k, "recall": mean_std(v)} for k, v in recalls[protocol].items()]
        sections.append(f"Candidate recall (share of held-out movies among a list; each source hands over its top "
                        f"{CANDIDATES}, their union has {size:.0f} on average):\n\n"
                        + markdown_table(recall_rows, ["candidates", "recall"]))
        if p.others():
            sections.append("Other systems on this protocol (not this run):\n\n"
                            + markdown_table(p.others(), ["model", "figures", "where"]))
    goal_rows = []
    for protocol, model, metric, target, better in GOALS:
        if protocol not in args.protocols:
            continue
        mean = mean_of(results[(protocol, model)][metric])
        met = mean <= target if better == "lower" else mean >= target
        goal_rows.append({"goal": f"{protocol}: {model} {metric} {'≤' if better == 'lower' else '≥'} {target}",
                          "measured": f"{mean:.4f}", "met": "yes" if met else f"no (by {abs(mean - target):.4f})"})
    for protocol in args.protocols:
        for metric in VERSUS:
            graph, towers = (mean_of(results[(protocol, m)][metric]) for m in (GRAPH, "two-tower retrieval only"))
            goal_rows.append({"goal": f"{protocol}: LightGCN {metric} ≥ two-tower's ({towers:.4f})",
                              "measured": f"{graph:.4f}",
                              "met": "yes" if graph >= towers else f"no (by {towers - graph:.4f})"})
    sections.append("### Goals\n\n" + markdown_table(goal_rows, ["goal", "measured", "met"]))
    text = "\n\n".join(sections)
    emit("quality", text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
