"""Movies nobody has rated yet, on MovieLens 100K: the coldstart protocol (a tenth of the rated
movies held out with all their ratings), where each test user ranks the held-out movies. The
two-tower model, trained with the flow's defaults, scores them by their genres, title and year
alone (``TwoTower.content_vectors``); beside it the content kNN baseline (TF-IDF cosine to the
movies the user rated). EASEᴿ, ALS, LightGCN and every peer know a movie by its ratings alone and
cannot score these. Mean ± std over seeds; writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/coldstart.py               # seeds 42-44, about 2 min on 2 cores
    .venv/bin/python benchmarks/coldstart.py --seeds 42 --no-write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict

from results import emit, markdown_table, mean_std

from movierec import data, pipeline
from movierec.core.protocols import PROTOCOLS
from movierec.core.settings import Settings
from movierec.data.features import encode
from movierec.training import retrieval
from movierec.training.evaluation import Evaluator

COLUMNS = ["ndcg@10", "p@10", "r@10"]
TOWER, CONTENT = "two-tower (features alone)", "content kNN baseline"
GOAL = 1.5  # issue 27: the two-tower's NDCG@10 at least 1.5x the content baseline's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    enc = encode(data.load_dataset(data.fetch_ml100k()))
    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    held_out, started = [], time.perf_counter()
    for seed in args.seeds:
        t0 = time.perf_counter()
        settings = Settings(protocol="coldstart", seed=seed)
        split = pipeline.split_for(enc, "coldstart", seed)
        evaluator = Evaluator(enc, split)
        with tempfile.TemporaryDirectory() as storage:
            model = retrieval.train(enc, split.train, settings, storage)
        for row in evaluator.cold_rows(model, model.embeddings()[0]):
            for c in COLUMNS:
                results[row["model"]][c].append(row[c])
        held_out.append(len(evaluator.cold))
        print(f"[coldstart] seed {seed}: {len(evaluator.cold)} movies held out, {len(evaluator.users)} test users, "
              f"two-tower {len(model.history)} epochs; {time.perf_counter() - t0:.0f} s", flush=True)

    rows = [{"model": name, **{c: mean_std(v[c]) for c in COLUMNS}} for name, v in results.items()]
    rows.append({"model": "EASEᴿ, ALS, LightGCN, BiVAE and the other peers", **{c: "cannot score" for c in COLUMNS}})
    tower, content = (sum(results[m]["ndcg@10"]) / len(args.seeds) for m in (TOWER, CONTENT))
    ratio = tower / content
    goal = (f"two-tower NDCG@10 ≥ {GOAL}x the content baseline's: {ratio:.2f}x "
            + ("(met)" if ratio >= GOAL else f"(not met: {GOAL * content - tower:.4f} short)"))
    text = (f"## Movies nobody has rated (coldstart)\n\n`benchmarks/coldstart.py` — seeds {args.seeds}, "
            f"{held_out[0]} of ML-100K's movies held out per seed; flow defaults; "
            f"{time.perf_counter() - started:.0f} s in all.\n\n{PROTOCOLS['coldstart'].description}.\n\n"
            f"{markdown_table(rows, ['model'] + COLUMNS)}\n\nGoal: {goal}.")
    emit("coldstart", text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
