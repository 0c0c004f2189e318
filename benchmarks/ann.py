"""Annoy against exact search on an ML-20M-sized catalogue (26,744 movies): recall@100 and
single-threaded queries per second over n_trees x search_k, beside exact numpy search measured in
the same run (one query at a time, and batched). Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/ann.py [--items 26744] [--queries 1000] [--dim 64]
    .venv/bin/python benchmarks/ann.py --from-run /tmp/scale/flow-20000263   # trained vectors

By default vectors are unit-length and clustered (a mixture of 200 directions), like trained
tower outputs; uniform random vectors would make every method look worse than on real
embeddings. ``--from-run`` takes a Metaflow datastore root (as benchmarks/scale.py keeps with
``--keep``) and uses the latest run's trained movie vectors as the catalogue and a sample of its
user vectors as queries; that table goes to its own section.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from results import emit, markdown_table, median_seconds

from movierec.core.settings import IndexSettings
from movierec.models import index


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator, clusters: int = 200) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.normal(scale=0.6, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def trained_vectors(root: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(movie vectors, user vectors, run id) of the latest RecommenderFlow run stored under ``root``."""
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(root.resolve())
    from metaflow import Flow, namespace

    namespace(None)
    run = Flow("RecommenderFlow").latest_successful_run
    index = run["build_index"].task.data.retrieval_index
    return index.item_vectors, index.user_vectors, run.id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--from-run", type=Path, help="a Metaflow datastore root holding a RecommenderFlow run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.from_run:
        items, users, run_id = trained_vectors(args.from_run)
        queries = users[rng.choice(len(users), min(args.queries, len(users)), replace=False)]
        args.items, args.dim, args.queries = len(items), items.shape[1], len(queries)
        source, section = f"trained movie vectors of run {run_id} ({len(users):,} users' vectors sampled as queries)", \
            "ann-trained"
    else:
        items = clustered_unit_vectors(args.items, args.dim, rng)
        queries = clustered_unit_vectors(args.queries, args.dim, rng)
        source, section = "clustered unit vectors", "ann"
    exact = index.exact_top_k(queries, items, args.k)

    one_by_one = median_seconds(lambda: [index.exact_top_k(q[None], items, args.k) for q in queries[:200]]) / 200
    batched = median_seconds(lambda: index.exact_top_k(queries, items, args.k)) / len(queries)
    rows = [{"method": "exact numpy, one query at a time", "recall@100": "1.0000", "QPS": f"{1 / one_by_one:,.0f}"},
            {"method": "exact numpy, batched (chunks of 2048)", "recall@100": "1.0000", "QPS": f"{1 / batched:,.0f}"}]
    best = None
    for n_trees in (10, 25, 50, 100):
        t0 = time.perf_counter()
        blob = index.build(items, IndexSettings(n_trees=n_trees))
        build_s = time.perf_counter() - t0
        for search_k in (-1, 2_000, 5_000, 20_000, 50_000):
            settings = IndexSettings(n_trees=n_trees, search_k=search_k)
            with index.Index(blob, args.dim, settings) as ix:
                approx = ix.query_many(queries, args.k)
                per_query = median_seconds(lambda ix=ix: ix.query_many(queries, args.k)) / len(queries)
            recall = index.recall_at_k(approx, exact)
            qps = 1 / per_query
            rows.append({"method": f"Annoy n_trees={n_trees} search_k={search_k}", "recall@100": f"{recall:.4f}",
                         "QPS": f"{qps:,.0f}", "build s": f"{build_s:.1f}", "index MB": f"{len(blob) / 1e6:.1f}",
                         "vs exact one-by-one": f"{one_by_one / per_query:.1f}x"})
            if recall >= 0.95 and qps >= 2000 and (best is None or qps > best[1]):
                best = (rows[-1]["method"], qps, recall)
            print(rows[-1], flush=True)
    verdict = (f"Fastest setting with recall@100 ≥ 0.95 and ≥ 2,000 QPS: **{best[0]}** "
               f"({best[1]:,.0f} QPS, recall {best[2]:.4f})." if best else
               "No setting reached recall@100 ≥ 0.95 at ≥ 2,000 QPS.")
    text = (f"## Approximate nearest neighbours (Annoy{', trained vectors' if args.from_run else ''})\n\n"
            f"`benchmarks/ann.py` — {args.items:,} {source}, dim {args.dim}, {args.queries:,} queries, k={args.k}, "
            "one thread; medians of 3 timings. search_k -1 is Annoy's default, n_trees x k.\n\n"
            + markdown_table(rows, ["method", "recall@100", "QPS", "build s", "index MB", "vs exact one-by-one"])
            + f"\n\n{verdict}")
    emit(section, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
