"""What each flow step does, as plain functions: the flow file only wires these together.

Keeping the logic here means it is importable, testable without Metaflow, and reusable from
benchmarks and notebooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from movierec import data, index, synthetic
from movierec.cluster import ray_session
from movierec.config import RETRIEVAL_NAMES, RetrievalConfig
from movierec.features import Encoded
from movierec.protocols import get_protocol
from movierec.split import Split, split_ratings

# The model modules import torch (1.5 s): steps that only load, split or report skip it.
if TYPE_CHECKING:
    from movierec.evaluation import Report
    from movierec.ranking import RankingResult
    from movierec.retrieval import RetrievalResult


def load_data(data_dir: str = "", synthetic_ratings: int = 0, max_ratings: int = 0, seed: int = 42) -> data.Dataset:
    """A user's ``--data-dir``, a synthetic ML-20M-shaped set, or by default ML-100K (fetched on demand)."""
    if data_dir and synthetic_ratings:
        raise ValueError("choose either --data-dir or --synthetic-ratings, not both")
    if synthetic_ratings:
        dataset = synthetic.ml20m_like(synthetic_ratings, seed=seed)
    else:
        dataset = data.load_dataset(Path(data_dir).expanduser() if data_dir else data.fetch_ml100k())
    for note in dataset.warnings:
        print(f"[start] warning: {note}", flush=True)
    return dataset.head(max_ratings)


def split_for(enc: Encoded, protocol: str, seed: int) -> Split:
    """The train/test split a named evaluation protocol prescribes."""
    p = get_protocol(protocol)
    return split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, p.split, p.test_fraction, seed)


def run_retrieval(enc: Encoded, split: Split, cfg: RetrievalConfig, storage: str, ray_address: str = "",
                  num_cpus: int = 2) -> RetrievalResult:
    from movierec.retrieval import train

    with ray_session(ray_address, num_cpus):
        return train(enc, split.train, cfg, storage, cpus_per_worker=max(1, num_cpus // cfg.workers))


def run_tuning(enc: Encoded, split: Split, storage: str, samples: int, epochs: int, seed: int,
               ray_address: str = "", num_cpus: int = 2, trial_ratings: int = 1_000_000,
               train_budget: int = 20_000_000, history: bool = False) -> RankingResult:
    from movierec.ranking import tune_ranking

    with ray_session(ray_address, num_cpus):
        return tune_ranking(enc, split.train, storage, num_samples=samples, max_epochs=epochs, seed=seed,
                            max_concurrent=num_cpus, trial_ratings=trial_ratings, max_examples=train_budget,
                            history=history)


@dataclass
class IndexQuality:
    """How the Annoy index compares with exact search on the same user queries."""

    recall_at_100: float
    annoy_ms_per_query: float
    exact_ms_per_query: float
    n_items: int
    dim: int


def measure_index(blob: bytes, settings: index.IndexSettings, user_vecs: np.ndarray, item_vecs: np.ndarray,
                  k: int = 100, max_queries: int = 10_000, seed: int = 0) -> IndexQuality:
    """Recall and speed of the index against exact search, on the users' vectors as queries (a
    uniform sample of ``max_queries`` of them on large data: Annoy takes one query at a time)."""
    if len(user_vecs) > max_queries:
        user_vecs = user_vecs[np.sort(np.random.default_rng(seed).choice(len(user_vecs), max_queries, replace=False))]
    t0 = time.perf_counter()
    exact = index.exact_top_k(user_vecs, item_vecs, k)
    t1 = time.perf_counter()
    with index.Index(blob, item_vecs.shape[1], settings) as ix:
        approx = ix.query_many(user_vecs, k)
    t2 = time.perf_counter()
    n = max(1, len(user_vecs))
    return IndexQuality(index.recall_at_k(approx, exact), 1000 * (t2 - t1) / n, 1000 * (t1 - t0) / n,
                        len(item_vecs), item_vecs.shape[1])


def evaluate(enc: Encoded, split: Split, retrieval: RetrievalResult, ranking: RankingResult,
             user_vecs: np.ndarray, item_vecs: np.ndarray, blob: bytes, settings: index.IndexSettings) -> Report:
    from movierec.evaluation import Evaluator

    with index.Index(blob, item_vecs.shape[1], settings) as ix:
        return Evaluator(enc, split).run(user_vecs, item_vecs, retrieval.config.temperature, ix, ranking.model(),
                                         RETRIEVAL_NAMES[retrieval.config.model])
