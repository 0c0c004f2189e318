"""Every model and baseline scored on one protocol's split (see ``movierec.core.protocols``) in one table.

Whatever the protocol, the report has every metric:
top-K categorical accuracy over all movies (TFRS), RMSE/MAE of the rating model, and
NDCG/precision/recall@10 of recommendations of unseen movies (Microsoft Recommenders).

Rows are the two-stage pipeline (exact and Annoy retrieval), each candidate source alone (the
retrieval model and every fitted one of ``movierec.models.sources``), a popularity baseline and a
global-mean baseline; beside them, each
source's candidate recall and the union's. A cell is None where a metric does not apply to a row
(a global mean cannot rank movies; a popularity list predicts no personal rating). Implicit-only
data has no ratings: no rating model, no RMSE/MAE in any row and no global-mean row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from movierec.core import arrays, metrics
from movierec.core.settings import CANDIDATES
from movierec.data.features import Encoded
from movierec.data.split import Split
from movierec.models.index import Index
from movierec.models.second_stage import RETRIEVAL, Rate, candidates, top
from movierec.models.sources import SOURCES, interactions
from movierec.training.stages import TwoStage

if TYPE_CHECKING:
    from movierec.training.retrieval import RetrievalResult


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
    recall: dict[str, float] = field(default_factory=dict)  # candidate recall of each source and of the union
    union_size: float = 0.0  # mean candidates per user in the union
    implicit: bool = False  # the data had no ratings: no rating errors to report
    # Movies of the test split without a training rating (the coldstart protocol): rows ranking only them
    cold: list[dict[str, object]] = field(default_factory=list)
    cold_items: int = 0

    def row(self, model: str) -> dict[str, object]:
        return next(r for r in self.rows if r["model"] == model)

    def columns(self) -> list[str]:
        return report_columns(self.ks, self.ndcg_k)

    def cells(self) -> list[list[str]]:
        """Each row's cells as the terminal and the card show them: every metric in one format,
        four decimals (0.0045 beside 1.0350, not 0.004508 beside 1.035), so a column reads down."""
        return [[r["model"] if c == "model" else _fmt(r.get(c)) for c in self.columns()] for r in self.rows]

    def to_text(self) -> str:
        """The metrics table as aligned plain text, for the terminal and logs."""
        cols, cells = self.columns(), self.cells()
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        if self.recall:
            lines.append(f"candidate recall (held-out movies among the candidates; {self.candidates} per source, "
                         f"{self.union_size:.0f} in the union on average): "
                         + ", ".join(f"{name} {value:.4f}" for name, value in self.recall.items()))
        if self.cold:
            lines.append(f"movies nobody rated in training ({self.cold_items}), ranked among themselves: "
                         + ", ".join(f"{r['model']} ndcg@{self.ndcg_k} {r[f'ndcg@{self.ndcg_k}']:.4f} "
                                     f"r@{self.ndcg_k} {r[f'r@{self.ndcg_k}']:.4f}" for r in self.cold))
        return "\n".join(lines)


CONTENT_FEATURES = ("genres", "title", "year")


def content_profiles(enc: Encoded, seen_ptr: np.ndarray, seen: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The content baseline of the coldstart protocol, content-based item kNN: (the users x movies
    matrix of what each user rated; each movie's feature vector, its genres, title words and year
    bucket weighted by TF-IDF, unit length). A user's profile is their row of the product, the sum
    of the feature vectors of the movies they rated; its dot product with a movie's vector is the
    summed cosine similarity of that movie to everything the user rated, which needs no rating of
    the movie itself. On ML-100K's coldstart splits it ranked held-out movies 2.5x as well as the
    user's genre shares alone did (NDCG@10 0.184 against 0.073, seed 42): words and year carry
    as much as genres."""
    parts = []
    for name in CONTENT_FEATURES:
        bags = enc.item_features[name]  # padded indices, 0 = none
        rows, cols = np.nonzero(bags)
        part = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, bags[rows, cols])),
                             shape=(enc.n_items, enc.vocab_sizes[name]))
        part.data[:] = 1.0  # a word twice in a title counts once
        documents = np.bincount(part.indices, minlength=part.shape[1])
        parts.append(part @ sp.diags(np.log((1.0 + enc.n_items) / (1.0 + documents)).astype(np.float32)))
    items = sp.hstack(parts).tocsr()
    norms = np.sqrt(np.asarray(items.multiply(items).sum(1)).ravel())
    items = (sp.diags((1.0 / np.maximum(norms, 1e-12)).astype(np.float32)) @ items).tocsr()
    rated = sp.csr_matrix((np.ones(len(seen), np.float32), seen, seen_ptr), shape=(enc.n_users, enc.n_items))
    return rated, items


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
        train = arrays.Interactions.of(enc, split.train, stars=False)
        self.seen_ptr, self.seen = train.csr()
        self.history = interactions(train)
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
        # Movies of the test ratings that no training rating has (the coldstart protocol holds them out):
        # only a model that reads a movie's features can score them.
        self.cold = np.flatnonzero((np.bincount(self.test_items, minlength=enc.n_items) > 0) & (counts == 0))

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

    def cold_row(self, name: str, scores: Callable[[np.ndarray], np.ndarray | sp.spmatrix], chunk: int = 1024
                 ) -> dict[str, object]:
        """A report row for the movies nobody rated in training (``cold``): each test user's top
        ``ndcg_k`` of them by ``scores(users)`` ([users, cold movies], a chunk of test users at a
        time), and its NDCG, precision and recall. None of them is a movie the user rated in
        training, so nothing is excluded."""
        k = min(self.ndcg_k, len(self.cold))
        lists = []
        for us in np.array_split(self.users, max(1, -(-len(self.users) // chunk))):
            chunk_scores = scores(us)
            chunk_scores = chunk_scores.toarray() if sp.issparse(chunk_scores) else np.asarray(chunk_scores)
            lists.append(self.cold[arrays.top_k(chunk_scores.astype(np.float32), k)])
        return {"model": name, **self.ranking(np.concatenate(lists))}

    def cold_rows(self, retrieval: RetrievalResult, user_vecs: np.ndarray) -> list[dict[str, object]]:
        """Rows for the movies nobody rated in training (none unless the split holds movies out):
        the two-tower's ranking of them by their features alone (``TwoTower.content_vectors``;
        LightGCN knows a movie by its ratings only) and the content baseline's
        (``content_profiles``). EASEᴿ, ALS and the peers know a movie by its ratings alone: they
        cannot score these movies, and have no row. ``user_vecs``: the retrieval model's user vectors."""
        if not len(self.cold):
            return []
        rows = []
        if retrieval.config.model == "two_tower":
            import torch

            with torch.no_grad():
                cold_vecs = retrieval.model().content_vectors(torch.as_tensor(self.cold)).numpy()
            name = f"{retrieval.config.name} (features alone)"
            rows.append(self.cold_row(name, lambda us: user_vecs[us] @ cold_vecs.T))
        rated, items = content_profiles(self.enc, self.seen_ptr, self.seen)
        cold_items = items[self.cold].T.tocsc()
        # a chunk's profiles at a time: all of ML-20M's users' would take about a gigabyte
        rows.append(self.cold_row("content kNN baseline", lambda us: (rated[us] @ items) @ cold_items))
        return rows

    def candidates_exact(self, user_vecs: np.ndarray, item_vecs: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Each test user's ``candidates`` best unseen items by exact dot product: one matrix
        product and one partial sort per chunk of users (no per-user loop)."""
        return np.concatenate([
            arrays.top_k_excluding(user_vecs[us] @ item_vecs.T, us, self.seen_ptr, self.seen, self.candidates)
            for us in np.array_split(self.users, max(1, -(-len(self.users) // chunk)))
        ])

    def candidates_annoy(self, user_vecs: np.ndarray, index: Index, users: np.ndarray, n: int) -> np.ndarray:
        """Each of ``users``' ``n`` best unseen movies from Annoy, which takes one query at a time."""
        out = np.full((len(users), n), -1, dtype=np.int64)
        for row, u in enumerate(users):
            seen = self.seen[self.seen_ptr[u] : self.seen_ptr[u + 1]]
            found = index.query_excluding(user_vecs[u], n, seen)
            out[row, : len(found)] = found
        return out

    def second_stage(self, stages: TwoStage, rate: Rate | None, users: np.ndarray, index: Index | None = None,
                     chunk: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """For ``users``: the two-stage top-``ndcg_k`` lists, each source's own top lists, twice as
        long as its share of the candidates (the retrieval model's from ``index`` when given, else
        exact), and the union of the candidates.
        In chunks of users: all movies of all users at once would need gigabytes at ML-20M size."""
        tops, lists, items = [], {}, []
        for part in np.array_split(users, max(1, -(-len(users) // chunk))):
            scores = stages.scores(part, self.history[part], stages.sources.final)
            n = stages.ranker.candidates
            given = {RETRIEVAL: self.candidates_annoy(stages.index.user_vectors, index, part, n)} if index else None
            cands = candidates(part, scores, (self.seen_ptr, self.seen), ratings=rate, popularity=self.popularity,
                               n=n, lists=given, depth=2 * n)
            tops.append(top(stages.ranker, cands, self.ndcg_k))
            items.append(cands.items)
            for name, picked in cands.lists.items():
                lists.setdefault(name, []).append(picked)
        return np.concatenate(tops), {n: np.concatenate(v) for n, v in lists.items()}, arrays.concat_rows(items, -1)

    def recall(self, lists: np.ndarray, users: np.ndarray) -> float:
        """Mean share of each user's held-out movies found anywhere in their list."""
        found = metrics.hits(lists, users, self.keys, self.enc.n_items).sum(1)
        n_relevant = self.n_relevant[users]
        return float(np.mean(found[n_relevant > 0] / n_relevant[n_relevant > 0]))

    def run(self, stages: TwoStage) -> Report:
        """Score every row of the report: the two-stage pipeline (exact and Annoy retrieval),
        each candidate source alone, and the baselines; and each source's candidate recall."""
        with stages.index.open() as index:
            return self._run(stages, index)

    def _run(self, stages: TwoStage, index: Index) -> Report:
        user_vecs, item_vecs = stages.index.user_vectors, stages.index.item_vectors
        rate, implicit = stages.rater(), self.enc.implicit
        rating = {"rmse": None, "mae": None}
        if rate is not None:
            pred = rate(self.test_users, self.test_items)
            rating = {"rmse": metrics.rmse(pred, self.test_ratings), "mae": metrics.mae(pred, self.test_ratings)}
        exact_ranks = metrics.target_ranks(user_vecs, item_vecs, self.test_users, self.test_items)
        # Annoy's top-K accuracy: the test pairs of the sampled users, against Annoy's lists.
        sampled = np.isin(self.test_users, self.annoy_users)
        annoy_lists = index.query_many(user_vecs[self.annoy_users], max(self.ks))
        row_of = np.searchsorted(self.annoy_users, self.test_users[sampled])
        annoy_ranks = metrics.ranks_in_lists(annoy_lists[row_of], self.test_items[sampled])
        exact_top, lists, union = self.second_stage(stages, rate, self.users)
        annoy_top, _, _ = self.second_stage(stages, rate, self.annoy_users, index)
        na = {c: None for c in report_columns(self.ks, self.ndcg_k) if c != "model"}
        mean = np.full(len(self.test_ratings), self.global_mean)
        names = {RETRIEVAL: f"{stages.retrieval.config.name} retrieval only",
                 **{name: f"{SOURCES[name].label} source only" for name in stages.sources.final}}
        rows = [
            {"model": "two-stage (exact retrieval)", **self.accuracy(exact_ranks), **rating,
             **self.ranking(exact_top)},
            {"model": "two-stage (Annoy retrieval)", **self.accuracy(annoy_ranks), **rating,
             **self.ranking(annoy_top, self.annoy_users)},
            {"model": names[RETRIEVAL], **self.accuracy(exact_ranks), "rmse": None, "mae": None,
             **self.ranking(lists[RETRIEVAL][:, : self.ndcg_k])},
            *({"model": names[name], **na, **self.ranking(picked[:, : self.ndcg_k])}
              for name, picked in lists.items() if name != RETRIEVAL),
            self.factorized_row("popularity baseline", np.ones((self.enc.n_users, 1), np.float32),
                                self.popularity[:, None], None if implicit else self.item_mean[self.test_items]),
            *([] if implicit else [{"model": "global-mean baseline", **na,
                                    "rmse": metrics.rmse(mean, self.test_ratings),
                                    "mae": metrics.mae(mean, self.test_ratings)}]),
        ]
        n = stages.ranker.candidates
        recall = {f"{names[name].removesuffix(' only')} top {depth}": self.recall(picked[:, :depth], self.users)
                  for name, picked in lists.items() for depth in (n, 2 * n)}
        recall["union of all sources"] = self.recall(union, self.users)
        return Report(rows=rows, samples=self.samples(exact_top[:3]), ks=self.ks, ndcg_k=self.ndcg_k,
                      candidates=stages.ranker.candidates, annoy_users=len(self.annoy_users),
                      test_users=len(self.users), recall=recall, union_size=float((union >= 0).sum(1).mean()),
                      implicit=implicit, cold=self.cold_rows(stages.retrieval, user_vecs),
                      cold_items=len(self.cold))

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
