"""Every model and baseline scored on one protocol's split (see ``movierec.protocols``) in one table.

Whatever the protocol, the report has every metric:
top-K categorical accuracy over all movies (TFRS), RMSE/MAE of the rating model, and
NDCG/precision/recall@10 of recommendations of unseen movies (Microsoft Recommenders).

Rows are the two-stage pipeline (exact and Annoy retrieval), retrieval alone, a popularity
baseline and a global-mean baseline. A cell is None where a metric does not apply to a row
(a global mean cannot rank movies; a popularity list predicts no personal rating).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from movierec import arrays, metrics
from movierec.features import Encoded
from movierec.index import Index, RetrievalIndex
from movierec.ranking import RatingModel, predict, two_stage_scores
from movierec.settings import CANDIDATES, RetrievalConfig
from movierec.split import Split


def report_columns(ks: tuple[int, ...], n: int) -> list[str]:
    """The metric columns of every report: top-K accuracies, rating errors, ranking at ``n``."""
    return ["model"] + [f"top{k}" for k in ks] + ["rmse", "mae", f"ndcg@{n}", f"p@{n}", f"r@{n}"]


@dataclass
class Report:
    rows: list[dict[str, object]]
    samples: list[dict[str, object]] = field(default_factory=list)
    ks: tuple[int, ...] = metrics.KS
    ndcg_k: int = 10
    candidates: int = CANDIDATES
    annoy_users: int = 0  # test users behind the Annoy row (a sample on large data)
    test_users: int = 0

    def row(self, model: str) -> dict[str, object]:
        return next(r for r in self.rows if r["model"] == model)

    def columns(self) -> list[str]:
        return report_columns(self.ks, self.ndcg_k)

    def to_text(self) -> str:
        """The metrics table as aligned plain text, for the terminal and logs."""
        cols = self.columns()
        cells = [[r["model"] if c == "model" else _fmt(r.get(c)) for c in cols] for r in self.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)


def _fmt(value: object) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


class Evaluator:
    """Holds what every metric needs: the test interactions, each user's seen and held-out items.

    Everything is arrays (CSR for seen items, sorted keys for held-out pairs), so scoring all
    test users is a few matrix products and vectorised lookups at any data size. Annoy answers
    one query at a time, so its row is scored on a uniform sample of at most ``annoy_users``
    test users (all of them on ML-100K-sized data).
    """

    def __init__(self, enc: Encoded, split: Split, *, ks: tuple[int, ...] = metrics.KS, candidates: int = CANDIDATES,
                 ndcg_k: int = 10, annoy_users: int = 10_000, seed: int = 0):
        self.enc, self.ks, self.candidates, self.ndcg_k = enc, ks, candidates, ndcg_k
        self.test_users = enc.user_idx[split.test]
        self.test_items = enc.item_idx[split.test]
        self.test_ratings = enc.rating[split.test]
        self.seen_ptr, self.seen = arrays.csr(enc.user_idx[split.train], enc.item_idx[split.train], enc.n_users)
        self.users = np.unique(self.test_users)
        self.keys = metrics.relevant_keys(self.test_users, self.test_items, enc.n_items)
        self.n_relevant = np.bincount(self.keys // enc.n_items, minlength=enc.n_users)
        rng = np.random.default_rng(seed)
        self.annoy_users = np.sort(rng.choice(self.users, annoy_users, replace=False)) \
            if len(self.users) > annoy_users else self.users
        counts = np.bincount(enc.item_idx[split.train], minlength=enc.n_items)
        self.popularity = counts.astype(np.float32)
        sums = np.bincount(enc.item_idx[split.train], weights=enc.rating[split.train], minlength=enc.n_items)
        self.global_mean = float(enc.rating[split.train].mean())
        # Item means shrunk towards the global mean (10 pseudo-ratings): the popularity row's rating guess.
        self.item_mean = (sums + 10 * self.global_mean) / (counts + 10)

    def ranking(self, lists: np.ndarray, users: np.ndarray | None = None) -> dict[str, float]:
        """NDCG, precision and recall at ``ndcg_k`` of each test user's list of unseen movies
        (rows follow ``users``, by default all test users)."""
        users = self.users if users is None else users
        hit, n_rel, k = metrics.hits(lists, users, self.keys, self.enc.n_items), self.n_relevant[users], self.ndcg_k
        precision, recall = metrics.precision_recall_at_k(hit, n_rel, k)
        return {f"ndcg@{k}": metrics.ndcg_at_k(hit, n_rel, k), f"p@{k}": precision, f"r@{k}": recall}

    def accuracy(self, ranks: np.ndarray) -> dict[str, float]:
        return {f"top{k}": v for k, v in metrics.categorical_accuracy(ranks, self.ks).items()}

    def factorized_row(self, name: str, user_vecs: np.ndarray, item_vecs: np.ndarray,
                       predictions: np.ndarray | None = None) -> dict[str, object]:
        """A report row for any model that orders movies by a dot product (and may predict ratings)."""
        ranks = metrics.target_ranks(user_vecs, item_vecs, self.test_users, self.test_items)
        lists = self.candidates_exact(user_vecs, item_vecs)[:, : self.ndcg_k]
        rating = {"rmse": None, "mae": None}
        if predictions is not None:
            rating = {"rmse": metrics.rmse(predictions, self.test_ratings),
                      "mae": metrics.mae(predictions, self.test_ratings)}
        return {"model": name, **self.accuracy(ranks), **rating, **self.ranking(lists)}

    def candidates_exact(self, user_vecs: np.ndarray, item_vecs: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Each test user's ``candidates`` best unseen items by exact dot product: one matrix
        product and one partial sort per chunk of users (no per-user loop)."""
        return np.concatenate([
            arrays.top_k_excluding(user_vecs[us] @ item_vecs.T, us, self.seen_ptr, self.seen, self.candidates)
            for us in np.array_split(self.users, max(1, -(-len(self.users) // chunk)))
        ])

    def candidates_annoy(self, user_vecs: np.ndarray, index: Index) -> np.ndarray:
        """The same from Annoy for ``annoy_users``. Annoy's API takes one query at a time, hence the loop."""
        out = np.full((len(self.annoy_users), self.candidates), -1, dtype=np.int64)
        for row, u in enumerate(self.annoy_users):
            seen = self.seen[self.seen_ptr[u] : self.seen_ptr[u + 1]]
            found = index.query_excluding(user_vecs[u], self.candidates, seen)
            out[row, : len(found)] = found
        return out

    def rerank(self, ranker: RatingModel, cands: np.ndarray, users: np.ndarray, user_vecs: np.ndarray,
               item_vecs: np.ndarray, temperature: float, chunk: int = 8192) -> np.ndarray:
        """Order each user's candidates (row r is for ``users[r]``) by the two-stage score; keep
        ``ndcg_k``. In chunks of users: all pairs at once would need gigabytes at ML-20M size."""
        out = []
        for i in range(0, len(cands), chunk):
            part, pair_users = cands[i : i + chunk], np.repeat(users[i : i + chunk], cands.shape[1])
            flat = np.maximum(part.reshape(-1), 0)
            logits = np.einsum("ij,ij->i", user_vecs[pair_users], item_vecs[flat]) / temperature
            scores = two_stage_scores(logits, predict(ranker, pair_users, flat)).reshape(part.shape)
            scores[part < 0] = -np.inf
            out.append(np.take_along_axis(part, arrays.top_k(scores, self.ndcg_k), axis=1))
        return np.concatenate(out) if out else cands[:, : self.ndcg_k]

    def run(self, retrieval: RetrievalIndex, config: RetrievalConfig, ranker: RatingModel) -> Report:
        """Score every row of the report: the two-stage pipeline (retrieval's vectors and Annoy
        index, ``config``'s temperature turning dot products into logits, ``ranker`` re-ranking),
        retrieval alone and the baselines."""
        with retrieval.open() as index:
            return self._run(retrieval.user_vectors, retrieval.item_vectors, config, index, ranker)

    def _run(self, user_vecs: np.ndarray, item_vecs: np.ndarray, config: RetrievalConfig, index: Index,
             ranker: RatingModel) -> Report:
        def rerank(cands: np.ndarray, users: np.ndarray) -> np.ndarray:
            return self.rerank(ranker, cands, users, user_vecs, item_vecs, config.temperature)

        pred = predict(ranker, self.test_users, self.test_items)
        rating = {"rmse": metrics.rmse(pred, self.test_ratings), "mae": metrics.mae(pred, self.test_ratings)}
        exact_ranks = metrics.target_ranks(user_vecs, item_vecs, self.test_users, self.test_items)
        # Annoy's top-K accuracy: the test pairs of the sampled users, against Annoy's lists.
        sampled = np.isin(self.test_users, self.annoy_users)
        annoy_lists = index.query_many(user_vecs[self.annoy_users], max(self.ks))
        row_of = np.searchsorted(self.annoy_users, self.test_users[sampled])
        annoy_ranks = metrics.ranks_in_lists(annoy_lists[row_of], self.test_items[sampled])
        exact_cands = self.candidates_exact(user_vecs, item_vecs)
        annoy_cands = self.candidates_annoy(user_vecs, index)
        na = {c: None for c in report_columns(self.ks, self.ndcg_k) if c != "model"}
        mean = np.full(len(self.test_ratings), self.global_mean)
        rows = [
            {"model": "two-stage (exact retrieval)", **self.accuracy(exact_ranks), **rating,
             **self.ranking(rerank(exact_cands, self.users))},
            {"model": "two-stage (Annoy retrieval)", **self.accuracy(annoy_ranks), **rating,
             **self.ranking(rerank(annoy_cands, self.annoy_users), self.annoy_users)},
            {"model": f"{config.name} retrieval only", **self.accuracy(exact_ranks), "rmse": None, "mae": None,
             **self.ranking(exact_cands[:, : self.ndcg_k])},
            self.factorized_row("popularity baseline", np.ones((self.enc.n_users, 1), np.float32),
                                self.popularity[:, None], self.item_mean[self.test_items]),
            {"model": "global-mean baseline", **na,
             "rmse": metrics.rmse(mean, self.test_ratings), "mae": metrics.mae(mean, self.test_ratings)},
        ]
        return Report(rows=rows, samples=self.samples(rerank(exact_cands[:3], self.users[:3])), ks=self.ks,
                      ndcg_k=self.ndcg_k, candidates=self.candidates,
                      annoy_users=len(self.annoy_users), test_users=len(self.users))

    def samples(self, picks: np.ndarray) -> list[dict[str, object]]:
        """Two-stage recommendations with titles for the first test users, beside what they rated."""
        out = []
        users = self.users[: len(picks)]
        hit = metrics.hits(picks, users, self.keys, self.enc.n_items)
        for row, u in enumerate(users):
            seen = self.seen[self.seen_ptr[u] : self.seen_ptr[u + 1]]
            liked = seen[np.argsort(-self.popularity[seen], kind="stable")][:5]
            out.append({
                "user_id": int(self.enc.user_ids[u]),
                "recommended": [self.enc.titles[i] for i in picks[row]],
                "held_out_hits": [self.enc.titles[i] for i in picks[row][hit[row]]],
                "rated_in_train": [self.enc.titles[i] for i in liked],
            })
        return out
