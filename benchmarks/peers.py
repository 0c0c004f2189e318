"""What a practitioner would pick instead of movierec, measured on exactly movierec's splits and by
movierec's own metric code, beside movierec trained in the same run. Writes the `peers` section of
benchmarks/RESULTS.md.

    make bench-setup                                   # the peers' libraries (requirements/peers.txt)
    .venv/bin/python benchmarks/peers.py               # every protocol x seeds 42 43 44
    .venv/bin/python benchmarks/peers.py --protocols msr --seeds 42 --peers ease als

Peers: EASEᴿ and BiVAE (cornac), ALS and BPR (implicit), SVD, SVD++ and BaselineOnly (Surprise),
most popular. Each peer's hyper-parameters are chosen on a validation carve-out of the training
ratings (drawn the way the protocol draws its test split), by nDCG@10 for the ranking peers and
RMSE for the rating peers, then the chosen setting is refitted on all training ratings and scored
on the test split. The test split chooses nothing. Fit and predict seconds are the refit's.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from results import emit, markdown_table, mean_std

from movierec import data, pipeline
from movierec.core import arrays, metrics
from movierec.core.protocols import PROTOCOLS, get_protocol
from movierec.core.settings import Settings
from movierec.data.features import Encoded, encode
from movierec.data.split import DataSplit, Split, split_ratings
from movierec.training.evaluation import Evaluator

WARM = [name for name, p in PROTOCOLS.items() if not p.cold]  # peers cannot score movies nobody rated
RANKING = ["ndcg@10", "p@10", "r@10", "top10", "top100"]
RATING = ["rmse", "mae"]
COLUMNS = ["model", *RANKING, *RATING, "fit s", "predict s", "chosen"]


@dataclass
class Fitted:
    """A refitted peer: scores for every (user, movie) for ranking peers, predictions for the
    test pairs for rating peers."""

    scores: np.ndarray | None = None
    predictions: np.ndarray | None = None


# A peer: (name, kind, hyper-parameter grid, fit(enc, train indices, params, seed, test pairs) -> Fitted)
Peer = tuple[str, str, list[dict], Callable[..., Fitted]]


def _matrix(enc: Encoded, idx: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(idx), np.float32), (enc.user_idx[idx], enc.item_idx[idx])),
                         shape=(enc.n_users, enc.n_items))


def _cornac_scores(model, enc: Encoded, idx: np.ndarray) -> np.ndarray:
    """Scores of a fitted cornac model in movierec's dense ids; movies it never saw score lowest
    (finite: the metric code multiplies scores, and -inf times 0 is nan)."""
    scores = np.full((enc.n_users, enc.n_items), -1e30, np.float32)
    items = np.array([model.train_set.iid_map[str(i)] for i in range(enc.n_items) if str(i) in model.train_set.iid_map])
    known = np.array([i for i in range(enc.n_items) if str(i) in model.train_set.iid_map])
    for u in np.unique(enc.user_idx[idx]):
        scores[u, known] = np.asarray(model.score(model.train_set.uid_map[str(u)])).ravel()[items]
    return scores


def _cornac(make: Callable[[dict, int], object]) -> Callable[..., Fitted]:
    def fit(enc: Encoded, idx: np.ndarray, params: dict, seed: int, pairs: np.ndarray) -> Fitted:
        import cornac

        triples = [(str(u), str(i), 1.0) for u, i in zip(enc.user_idx[idx], enc.item_idx[idx])]
        model = make(params, seed)
        model.fit(cornac.data.Dataset.from_uir(triples, seed=seed))
        return Fitted(scores=_cornac_scores(model, enc, idx))

    return fit


def _ease(params: dict, seed: int):
    from cornac.models import EASE

    # posB=True (cornac's default, though its docstring says False) zeroes every negative item weight; Steck's
    # EASEᴿ keeps them. Both are in the grid, so validation chooses, as a user tuning cornac would.
    return EASE(lamb=params["lamb"], posB=params["posB"], verbose=False, seed=seed)


def _bivae(params: dict, seed: int):
    from cornac.models import BiVAECF

    # Microsoft Recommenders' MovieLens settings: tanh encoder of [100], Poisson likelihood
    return BiVAECF(k=params["k"], encoder_structure=[100], act_fn="tanh", likelihood="pois",
                   n_epochs=params["epochs"], batch_size=128, learning_rate=0.001, seed=seed, use_gpu=False)


def _implicit(kind: str) -> Callable[..., Fitted]:
    def fit(enc: Encoded, idx: np.ndarray, params: dict, seed: int, pairs: np.ndarray) -> Fitted:
        import implicit

        cls = {"als": implicit.cpu.als.AlternatingLeastSquares, "bpr": implicit.cpu.bpr.BayesianPersonalizedRanking}
        model = cls[kind](**params, random_state=seed)
        model.fit(_matrix(enc, idx), show_progress=False)
        return Fitted(scores=np.asarray(model.user_factors @ model.item_factors.T))

    return fit


def _surprise(name: str) -> Callable[..., Fitted]:
    def fit(enc: Encoded, idx: np.ndarray, params: dict, seed: int, pairs: np.ndarray) -> Fitted:
        import pandas as pd
        import surprise

        frame = pd.DataFrame({"u": enc.user_idx[idx], "i": enc.item_idx[idx], "r": enc.rating[idx]})
        trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(0.5, 5))).build_full_trainset()
        model = getattr(surprise, name)(**params, **({} if name == "BaselineOnly" else {"random_state": seed}))
        model.fit(trainset)
        return Fitted(predictions=np.array([model.predict(int(u), int(i)).est for u, i in pairs]))

    return fit


def _popular(enc: Encoded, idx: np.ndarray, params: dict, seed: int, pairs: np.ndarray) -> Fitted:
    counts = np.bincount(enc.item_idx[idx], minlength=enc.n_items).astype(np.float32)
    return Fitted(scores=np.broadcast_to(counts, (enc.n_users, enc.n_items)).copy())


def _grid(**values: list) -> list[dict]:
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


PEERS: list[Peer] = [
    ("most popular", "ranking", [{}], _popular),
    ("EASEᴿ (cornac)", "ranking", _grid(lamb=[100, 250, 500, 1000, 2000], posB=[True, False]), _cornac(_ease)),
    ("BiVAE (cornac)", "ranking", _grid(k=[20, 50], epochs=[500]), _cornac(_bivae)),
    ("ALS (implicit)", "ranking", _grid(factors=[32, 64, 128], regularization=[1.0, 10.0, 50.0],
                                        alpha=[1.0, 5.0], iterations=[15]), _implicit("als")),
    ("BPR (implicit)", "ranking", _grid(factors=[64, 128], learning_rate=[0.01, 0.05], regularization=[0.01],
                                        iterations=[100]), _implicit("bpr")),
    ("BaselineOnly (Surprise)", "rating", [{}], _surprise("BaselineOnly")),
    ("SVD (Surprise)", "rating", _grid(n_factors=[50, 100], reg_all=[0.02, 0.05], n_epochs=[20]), _surprise("SVD")),
    ("SVD++ (Surprise)", "rating", _grid(n_factors=[20], reg_all=[0.02, 0.05], n_epochs=[20]), _surprise("SVDpp")),
]
SHORT = {"popular": "most popular", "ease": "EASEᴿ (cornac)", "bivae": "BiVAE (cornac)", "als": "ALS (implicit)",
         "bpr": "BPR (implicit)", "baseline": "BaselineOnly (Surprise)", "svd": "SVD (Surprise)",
         "svdpp": "SVD++ (Surprise)"}


def validation_split(enc: Encoded, train: np.ndarray, protocol: str, seed: int) -> Split:
    """A carve-out of the training ratings drawn as the protocol draws its test split."""
    p = get_protocol(protocol)
    inner = split_ratings(enc.user_idx[train], enc.item_idx[train], enc.timestamp[train], p.split_method,
                          p.test_fraction, seed=seed)
    return Split(train[inner.train], train[inner.test], inner.method, inner.dropped_test)


def _ndcg(evaluator: Evaluator, scores: np.ndarray) -> float:
    rows, cols = arrays.csr_rows(evaluator.seen_ptr, evaluator.seen, evaluator.users)
    s = scores[evaluator.users].copy()
    s[rows, cols] = -np.inf
    return evaluator.ranking(arrays.top_k(s, 10))["ndcg@10"]


def run_peer(peer: Peer, enc: Encoded, split: Split, val: Split, seed: int) -> dict:
    name, kind, grid, fit = peer
    val_eval, test_eval = Evaluator(enc, val), Evaluator(enc, split)
    val_pairs = np.stack([enc.user_idx[val.test], enc.item_idx[val.test]], 1)
    test_pairs = np.stack([enc.user_idx[split.test], enc.item_idx[split.test]], 1)

    def quality(params: dict) -> float:
        fitted = fit(enc, val.train, params, seed, val_pairs)
        if kind == "ranking":
            return _ndcg(val_eval, fitted.scores)
        return -metrics.rmse(fitted.predictions, enc.rating[val.test])

    chosen = max(grid, key=quality) if len(grid) > 1 else grid[0]
    t0 = time.perf_counter()
    fitted = fit(enc, split.train, chosen, seed, test_pairs)
    t1 = time.perf_counter()
    if kind == "ranking":
        row = test_eval.factorized_row(name, fitted.scores, np.eye(enc.n_items, dtype=np.float32))
    else:
        row = {"model": name, "rmse": metrics.rmse(fitted.predictions, test_eval.test_ratings),
               "mae": metrics.mae(fitted.predictions, test_eval.test_ratings)}
    t2 = time.perf_counter()
    return {**row, "fit s": t1 - t0, "predict s": t2 - t1, "chosen": ", ".join(f"{k}={v}" for k, v in chosen.items())}


def movierec_row(enc: Encoded, split: Split, protocol: str, seed: int) -> dict:
    """movierec's two-stage row with the flow's default settings, trained in this run."""
    settings = Settings(protocol=protocol, seed=seed)
    data_split = DataSplit(enc, split)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as storage:
        retrieval = pipeline.train_retrieval(data_split, settings, storage)
        stages = pipeline.stages(retrieval, pipeline.build_index(retrieval, settings),
                                 pipeline.fit_sources(data_split, settings),
                                 pipeline.tune_ranking(data_split, settings, storage))
        stages.ranker = pipeline.train_ranker(data_split, stages, settings)
    t1 = time.perf_counter()
    row = pipeline.evaluate(data_split, stages).row("two-stage (exact retrieval)")
    return {**row, "model": OURS, "fit s": t1 - t0,
            "predict s": time.perf_counter() - t1, "chosen": "validation: early stopping, ASHA search"}


OURS = "movierec two-stage (flow defaults)"
# (protocol, metric, margin): movierec's mean must beat every peer's mean by at least the margin
GOALS = [("msr", "ndcg@10", 0.01), ("tfrs", "ndcg@10", 0.0), ("tfrs", "rmse", 0.0), ("temporal", "ndcg@10", 0.0),
         ("temporal", "r@10", 0.0)]


def goal_rows(results: dict[tuple[str, str], list[dict]], protocols: list[str]) -> list[dict]:
    """movierec against the best peer of the same run, for each goal of a protocol that ran."""
    out = []
    for protocol, metric, margin in GOALS:
        means = {m: float(np.mean([r[metric] for r in runs])) for (p, m), runs in results.items()
                 if p == protocol and all(r.get(metric) is not None for r in runs)}
        if OURS not in means or len(means) < 2:
            continue
        ours = means.pop(OURS)
        lower = metric == "rmse"
        best = (min if lower else max)(means, key=means.get)
        gap = (means[best] - ours) if lower else (ours - means[best])
        out.append({"goal": f"{protocol}: {metric} {'below' if lower else 'above'} every peer"
                            + (f" by {margin}" if margin else ""),
                    "movierec": f"{ours:.4f}", "best peer": f"{best} {means[best]:.4f}",
                    "met": "yes" if (gap >= margin if margin else gap > 0) else f"no (by {margin - gap:.4f})"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", default=WARM, choices=WARM,
                        help="the protocols of rated movies (coldstart: benchmarks/coldstart.py)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--peers", nargs="+", default=list(SHORT), choices=list(SHORT))
    parser.add_argument("--no-movierec", action="store_true", help="the peers only")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    enc = encode(data.load_dataset(data.fetch_ml100k()))
    peers = [p for p in PEERS if p[0] in {SHORT[s] for s in args.peers}]
    results: dict[tuple[str, str], list[dict]] = defaultdict(list)
    started = time.perf_counter()
    for protocol in args.protocols:
        for seed in args.seeds:
            split = pipeline.split_for(enc, protocol, seed)
            val = validation_split(enc, split.train, protocol, seed)
            rows = [run_peer(p, enc, split, val, seed) for p in peers]
            if not args.no_movierec:
                rows.append(movierec_row(enc, split, protocol, seed))
            for row in rows:
                results[(protocol, row["model"])].append(row)
                print(f"[peers] {protocol} seed {seed} {row['model']}: ndcg@10 {row.get('ndcg@10')} "
                      f"rmse {row.get('rmse')} ({row['fit s']:.1f}s fit)", flush=True)

    sections = [f"## Peers on movierec's splits\n\n`benchmarks/peers.py` — seeds {args.seeds}; every peer's "
                "hyper-parameters chosen on a validation carve-out of train (drawn as the protocol draws its test "
                "split), then refitted on all of train; movierec's metric code; mean ± std over seeds; fit and "
                f"predict seconds of the refit on this machine; {time.perf_counter() - started:.0f} s in all."]
    for protocol in args.protocols:
        names = list(dict.fromkeys(m for p, m in results if p == protocol))
        rows = []
        for name in names:
            runs = results[(protocol, name)]
            row = {"model": name, **{c: mean_std([r.get(c) for r in runs]) for c in [*RANKING, *RATING]}}
            row["fit s"] = f"{np.median([r['fit s'] for r in runs]):.1f}"
            row["predict s"] = f"{np.median([r['predict s'] for r in runs]):.2f}"
            row["chosen"] = "; ".join(dict.fromkeys(r["chosen"] for r in runs))
            rows.append(row)
        sections.append(f"### Protocol `{protocol}`\n\n{get_protocol(protocol).description}.\n\n"
                        + markdown_table(rows, COLUMNS))
    if not args.no_movierec:
        sections.append("### Goals (issue 15)\n\n" + markdown_table(goal_rows(results, args.protocols),
                                                                     ["goal", "movierec", "best peer", "met"]))
    emit("peers", "\n\n".join(sections), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
