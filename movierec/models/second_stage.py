"""The second stage: the union of the candidate sources' lists, ordered by a learned ranker.

Each source (the retrieval model and the registered ones, ``movierec.models.sources``) hands over its ``candidates``
best unseen movies; the union is scored by a linear function of per-candidate features: each
source's raw score for the movie, the log of the rating model's predicted stars (not for
implicit-only data, which has no rating model), and the log of the movie's popularity. The
weights minimise a listwise softmax loss (ListNet) over validation pairs carved from train (the
retrieval model's early-stopping pairs, which neither the retrieval model, nor the sources'
tuning fits, nor the rating model trained on), with an L2 penalty chosen from a small grid by
nDCG@10 of held-out validation users.

Why a linear listwise model rather than a gradient-boosted LambdaRank one: measured on ML-100K
(msr, seed 42), LightGBM LambdaRank over these features, trained on per-user holdouts of train
and early-stopped on held-out users, ordered the test lists worse than EASEᴿ alone (nDCG@10
0.478 with four stacked folds, 0.448-0.462 with one, against 0.487): with about a thousand users
a tree ensemble learns the training users, not the task. Five weights cannot overfit that way,
and a blend is what the sources need. Against the coordinate ascent on nDCG@10 that came first
(Metzler and Croft, as in RankLib): 0.4963 against 0.4930 (msr seed 42), as the convex loss has
no local optima to stall in; the penalty chosen is strong (the best blends weigh the sources
almost alike). Each source's rank as three more features: 0.4982, within the seeds' spread, and
0.4532 against 0.4551 on tfrs, so left out. Raw scores rather than per-user normalised ones: as good in that
measurement, and serving can score a candidate without a pass over the whole catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from movierec.core import arrays, metrics

RETRIEVAL = "retrieval"  # the two-tower (or LightGCN) vectors' score: a source of its own, not in the registry
Rate = Callable[[np.ndarray, np.ndarray], np.ndarray]  # stars of aligned (user, movie) index pairs


def features(sources: Iterable[str], rated: bool) -> tuple[str, ...]:
    """The ranker's features for the candidate sources named (``movierec.models.sources``, in the
    registry's order): the retrieval model's score, each source's, the rating model's stars
    (``rated``; implicit-only data has no rating model) and popularity. They follow the sources
    fitted, so a source switched off is no feature, rather than a column of zeros."""
    return (RETRIEVAL, *sources, *(("rating",) if rated else ()), "popularity")


@dataclass
class Ranker:
    """The learned second stage: a linear score of standardised features, and how it was chosen."""

    features: tuple[str, ...]
    mean: np.ndarray  # per feature, over the validation candidates
    scale: np.ndarray
    weights: np.ndarray
    candidates: int  # per source
    val_ndcg: float  # of the held-out validation users, with the chosen penalty fitted on the others
    trials: list[dict] = field(default_factory=list)

    def score(self, values: np.ndarray) -> np.ndarray:
        """Ordering scores of candidates from their [..., features] values."""
        return ((values - self.mean) / self.scale) @ self.weights


@dataclass
class Candidates:
    """Each user's candidate movies (rows; -1 pads), their [rows, width, features] values (the
    ``features`` named), and each source's own top list (the union is of their first ``n`` columns)."""

    items: np.ndarray
    values: np.ndarray
    lists: dict[str, np.ndarray]
    features: tuple[str, ...]


def union(lists: list[np.ndarray]) -> np.ndarray:
    """Row-wise union of top lists ([rows, n] each, -1 pads), distinct movies first, -1 padded."""
    both = np.sort(np.concatenate(lists, axis=1), axis=1)
    both[:, 1:][both[:, 1:] == both[:, :-1]] = -1
    both = np.take_along_axis(both, np.argsort(both < 0, axis=1, kind="stable"), axis=1)
    return both[:, : max(1, int((both >= 0).sum(1).max()))]


def feature_values(features: tuple[str, ...], scores: dict[str, np.ndarray], stars: np.ndarray | None,
                   popularity: np.ndarray) -> np.ndarray:
    """[..., features] values of candidates, the one definition training, evaluation and serving
    share (a feature computed apart in serving would drift from what the ranker was fitted on):
    each source's raw score of the candidate (``scores`` by source name), the log of its predicted
    stars clipped to 0.5-5 (``stars``; None where there is no rating model, and then ``features``
    has no rating) and the log of its training popularity. All arrays have the candidates' shape.
    A feature no source scored is a ValueError: filled with zeros, the ranker would weigh nothing
    and only a parity test would notice."""
    columns = dict(scores)
    columns["popularity"] = np.log1p(popularity)
    if stars is not None:
        columns["rating"] = np.log(np.clip(stars, 0.5, 5.0))
    missing = [name for name in features if name not in columns]
    if missing:
        raise ValueError(f"the ranker weighs {', '.join(missing)}, which no candidate source scored (scored: "
                         f"{', '.join(columns)})")
    return np.stack([columns[name] for name in features], axis=-1)


def candidates(users: np.ndarray, scores: dict[str, np.ndarray], seen: tuple[np.ndarray, np.ndarray], *,
               ratings: Rate | None, popularity: np.ndarray, n: int, lists: dict[str, np.ndarray] | None = None,
               depth: int = 0) -> Candidates:
    """Candidates of ``users`` (row r is ``users[r]``): the union of each source's ``n`` best
    movies the user has not rated (``seen``: CSR indptr and indices over users), with their
    features (:func:`features` of the sources in ``scores``). ``scores`` holds [rows, movies]
    scores by source name ("retrieval" first, then the fitted ``movierec.models.sources``); ``lists``
    may give a source's candidate lists instead (the Annoy
    index's, for retrieval); ``ratings(users, movies)`` predicts stars for aligned pairs (None:
    no rating model, and no rating feature). Each
    source's own list is kept ``depth`` long when that is more than ``n`` (evaluation measures
    what a source alone finds with as many candidates as the union has)."""
    rows, cols = arrays.csr_rows(seen[0], seen[1], users)
    picked = {}
    for name, source in scores.items():
        if lists and name in lists:
            picked[name] = lists[name]
            continue
        masked = source.copy()
        masked[rows, cols] = -np.inf
        picked[name] = arrays.top_k(masked, max(n, depth))
    items = union([p[:, :n] for p in picked.values()])
    safe = np.maximum(items, 0)
    names = features((name for name in scores if name != RETRIEVAL), ratings is not None)
    stars = None
    if ratings is not None:
        stars = ratings(np.repeat(users, items.shape[1]), safe.reshape(-1)).reshape(items.shape)
    values = feature_values(names, {name: np.take_along_axis(s, safe, axis=1) for name, s in scores.items()},
                            stars, popularity[safe])
    return Candidates(items, values.astype(np.float32), picked, names)


def concat(parts: list[Candidates]) -> Candidates:
    """The candidates of consecutive chunks of users as one, rows padded to the widest union."""
    return Candidates(arrays.concat_rows([p.items for p in parts], -1),
                      arrays.concat_rows([p.values for p in parts], 0),
                      {name: np.concatenate([p.lists[name] for p in parts]) for name in parts[0].lists},
                      parts[0].features)


def top(ranker: Ranker, cands: Candidates, k: int) -> np.ndarray:
    """Each row's ``k`` best candidates by the ranker (-1 where a row has fewer).

    The ranker's weights go by position, so candidates of other features (e.g. from another set of sources
    of the same count) would be scored with the wrong weights and no error: they are refused instead.
    """
    if tuple(cands.features) != tuple(ranker.features):
        raise ValueError(f"the candidates carry the features {list(cands.features)}, but the ranker was fitted on "
                         f"{list(ranker.features)}: build the candidates from the sources the ranker was tuned with")
    scores = ranker.score(cands.values)
    scores[cands.items < 0] = -np.inf
    order = arrays.top_k(np.ascontiguousarray(scores, dtype=np.float32), k)
    picked = np.take_along_axis(cands.items, order, axis=1)
    return np.where(np.take_along_axis(scores, order, axis=1) > -np.inf, picked, -1)


L2 = (0.1, 0.3, 1.0, 3.0, 10.0)  # the L2 penalties tried for the listwise fit


@dataclass
class _Validation:
    """Standardised candidate features of validation users, and which candidates are relevant."""

    values: np.ndarray  # [users, width, features]
    pad: np.ndarray  # [users, width] True where a row has no candidate
    relevant: np.ndarray
    n_relevant: np.ndarray

    def ndcg(self, weights: np.ndarray, rows: np.ndarray) -> float:
        scores = self.values[rows] @ weights
        scores[self.pad[rows]] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        return metrics.ndcg_at_k(np.take_along_axis(self.relevant[rows], order, axis=1), self.n_relevant[rows], 10)


def fit_listwise(data: _Validation, rows: np.ndarray, l2: float) -> np.ndarray:
    """Weights minimising the listwise softmax cross-entropy (ListNet's top-one form) of ``rows``:
    each user's relevant candidates share the target probability, the softmax of the linear
    scores over the user's candidates is the prediction, plus ``l2`` times the squared weights.
    Convex and smooth, so L-BFGS finds the one optimum (coordinate ascent on nDCG itself stalled
    in local optima: with every feature it scored below a subset of them)."""
    from scipy.optimize import minimize

    rows = rows[data.relevant[rows].any(axis=1)]  # a list without a relevant movie teaches nothing
    values = data.values[rows].astype(np.float64)
    target = data.relevant[rows] / data.relevant[rows].sum(axis=1, keepdims=True)
    pad = data.pad[rows]

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        scores = values @ weights
        scores[pad] = -np.inf
        scores -= scores.max(axis=1, keepdims=True)
        log_p = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        log_p[pad] = 0.0
        value = -(target * log_p).sum() / len(rows) + l2 * weights @ weights
        grad = np.einsum("uw,uwf->f", np.exp(log_p) * ~pad - target, values) / len(rows) + 2 * l2 * weights
        return value, grad

    return minimize(loss, np.zeros(values.shape[-1]), jac=True, method="L-BFGS-B").x


def search(cands: Candidates, users: np.ndarray, keys: np.ndarray, n_items: int, *, per_source: int,
           seed: int) -> Ranker:
    """Learn the ranker on the validation candidates: for each L2 penalty of ``L2``, the listwise
    fit runs on 70% of the validation users and nDCG@10 of the other 30% scores it; the best
    penalty is then fitted on all of them. Features are standardised over the candidates, so one
    penalty weighs every feature alike. The grid runs here, one fit after another, not as Ray Tune
    trials: each is a convex fit of a few weights over at most 5,000 validation users (under a
    second), where Ray and Tune took 15-20 s to start on a 2-core machine."""
    valid, width = cands.items >= 0, len(cands.features)
    mean = np.array([cands.values[..., f][valid].mean() for f in range(width)], np.float32)
    scale = np.array([cands.values[..., f][valid].std() or 1.0 for f in range(width)], np.float32)
    data = _Validation((cands.values - mean) / scale, ~valid, metrics.hits(cands.items, users, keys, n_items),
                       np.bincount(keys // n_items, minlength=users.max() + 1)[users])
    order = np.random.default_rng(seed).permutation(len(users))
    fit_rows, check_rows = np.sort(order[len(users) * 3 // 10 :]), np.sort(order[: len(users) * 3 // 10])
    trials = [{"l2": l2, "val_ndcg": data.ndcg(fit_listwise(data, fit_rows, l2), check_rows)} for l2 in L2]
    # ties go to the stronger penalty: the simpler of two equally good fits
    trials.sort(key=lambda t: (-t["val_ndcg"], -t["l2"]))
    weights = fit_listwise(data, np.arange(len(users)), trials[0]["l2"])
    return Ranker(cands.features, mean, scale, weights.astype(np.float32), candidates=per_source,
                  val_ndcg=trials[0]["val_ndcg"], trials=trials)
