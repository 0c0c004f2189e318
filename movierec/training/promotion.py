"""The promotion gate: a newly trained model (the challenger) against the one in production (the
champion), both scored on the challenger's test split by the same code, and the decision whether
the challenger may replace it.

Both are scored as they serve: through ``Recommender`` on their bundles, so the comparison holds
whatever either was trained with (another version of movierec, other settings, less data). Each
test user's top-10 leaves out the movies the user rated in the challenger's training split (and
the champion's own, for a user it knows), so neither is credited for recommending what the user
had rated; a user the champion never saw is recommended from those training ratings, as the API
recommends for a new user.

A champion trained on other data may have trained on some of the challenger's test ratings: its
figures are then optimistic, and the gate errs towards keeping it. ``Scores.seen_test`` counts
such ratings so the card can say so.

Where the models are kept: Metaflow run tags are the registry. ``publish`` tags its run
``published:<version>`` always, and ``promoted`` when the gate lets it (``promotion-override`` when
``--promote-anyway`` did); the champion is the newest run tagged ``promoted`` in the run's namespace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from movierec.core import metrics
from movierec.core.settings import PromotionSettings
from movierec.data.split import DataSplit
from movierec.errors import BundleError
from movierec.serving.recommender import Recommender
from movierec.training.evaluation import Evaluator

K = 10
MAX_USERS = 10_000  # test users each model is scored on (a seeded sample beyond): both models ~1 ms each
PROMOTED, OVERRIDE = "promoted", "promotion-override"  # run tags


@dataclass(frozen=True)
class Scores:
    """A model's figures on a test split: nDCG@10 over its test users, RMSE over the test ratings
    it can rate (None without a rating model), and how many test ratings its bundle lists as rated
    in its own training (``seen_test``; 0 for the challenger)."""

    ndcg: float
    rmse: float | None
    rated_pairs: int  # test ratings the RMSE covers
    seen_test: int


def score(rec: Recommender, data_split: DataSplit, *, max_users: int = MAX_USERS) -> Scores:
    """``rec``'s :class:`Scores` on ``data_split``'s test split, by the metric code the flow's
    ``evaluate`` uses (``Evaluator.ranking``, ``metrics.rmse``), over its test users or the same
    seeded sample of ``max_users`` of them (the Evaluator's, whatever the model)."""
    enc, evaluator = data_split.enc, Evaluator(data_split.enc, data_split.split, annoy_users=max_users)
    users = evaluator.annoy_users  # all test users, or the seeded sample
    position = {int(m): i for i, m in enumerate(enc.item_ids)}
    lists = np.full((len(users), K), -1, np.int64)
    by_user = np.argsort(evaluator.test_users, kind="stable")
    bounds = np.searchsorted(evaluator.test_users[by_user], np.append(users, enc.n_users))
    seen_test = 0
    for row, u in enumerate(users):
        user = int(enc.user_ids[u])
        rated = [int(enc.item_ids[m]) for m in evaluator.seen[evaluator.seen_ptr[u]: evaluator.seen_ptr[u + 1]]]
        known = [m for m in rated if rec.has_movie(m)]
        if rec.knows_user(user):
            recs = rec.recommend(user, K, exclude_rated=True, also_exclude=known)
            test = enc.item_ids[evaluator.test_items[by_user[bounds[row]: bounds[row + 1]]]]
            seen_test += len(np.intersect1d(test, rec.rated(user)))
        elif known:  # as the API recommends for a new user: from the movies they rated (taken as liked)
            recs = rec.recommend_for_history(known, K)
        else:
            continue  # nothing to recommend from: an empty list scores 0, as for any model
        ids = [position.get(r.movie_id, -1) for r in recs]
        lists[row, : len(ids)] = ids
    rmse, pairs = None, 0
    if not rec.bundle.implicit and not enc.implicit:
        sampled = np.isin(evaluator.test_users, users)
        test_users, items = enc.user_ids[evaluator.test_users[sampled]], enc.item_ids[evaluator.test_items[sampled]]
        rateable = np.array([rec.knows_user(int(u)) and rec.has_movie(int(m)) for u, m in zip(test_users, items)],
                            bool)
        pairs = int(rateable.sum())
        if pairs:
            predicted = rec.predict_ratings(test_users[rateable].tolist(), items[rateable].tolist())
            rmse = metrics.rmse(np.asarray(predicted), evaluator.test_ratings[sampled][rateable])
    return Scores(evaluator.ranking(lists, users)[f"ndcg@{evaluator.ndcg_k}"], rmse, pairs, seen_test)


@dataclass(frozen=True)
class Decision:
    """Whether the challenger may be promoted, and why, in words a card and a log can print."""

    promote: bool
    reasons: list[str]
    overridden: bool = False  # promoted only because --promote-anyway said so


def decide(challenger: Scores, champion: Scores | None, *, ndcg_tolerance: float, rmse_tolerance: float,
           override: bool = False) -> Decision:
    """Promote unless the challenger's nDCG@10 is below the champion's by more than
    ``ndcg_tolerance`` or its RMSE above by more than ``rmse_tolerance`` (each regression says by
    how much); ``override`` promotes anyway and says so. With no champion, the first model is promoted."""
    if champion is None:
        return Decision(True, ["no champion yet: the first model is promoted"])
    regressions = []
    if challenger.ndcg < champion.ndcg - ndcg_tolerance:
        regressions.append(f"nDCG@10 {challenger.ndcg:.4f} is {champion.ndcg - challenger.ndcg:.4f} below the "
                           f"champion's {champion.ndcg:.4f} (tolerance {ndcg_tolerance:g})")
    if challenger.rmse is not None and champion.rmse is not None and \
            challenger.rmse > champion.rmse + rmse_tolerance:
        regressions.append(f"RMSE {challenger.rmse:.4f} is {challenger.rmse - champion.rmse:.4f} above the "
                           f"champion's {champion.rmse:.4f} (tolerance {rmse_tolerance:g})")
    if champion.seen_test:
        note = [f"the champion trained on {champion.seen_test} of these test ratings: its figures are optimistic"]
    else:
        note = []
    if not regressions:
        return Decision(True, [f"not worse than the champion beyond the tolerances (nDCG@10 {challenger.ndcg:.4f} "
                               f"against {champion.ndcg:.4f})", *note])
    if override:
        return Decision(True, ["promoted by override despite: " + "; ".join(regressions), *note], overridden=True)
    return Decision(False, regressions + note)


@dataclass
class Gate:
    """What the gate found: both models' scores, which run the champion is (None: no champion, or
    ``unreadable`` says why it could not be scored), and the decision."""

    challenger: Scores
    champion: Scores | None
    champion_run: str | None
    decision: Decision
    unreadable: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def champion_run(flow_name: str, run_id: str, settings: PromotionSettings) -> str | None:
    """The pathspec of the run the new one (``flow_name/run_id``) is gated against:
    ``settings.champion``, or the newest other run tagged ``promoted`` in the current namespace."""
    from metaflow import Flow

    if settings.champion:
        return settings.champion if "/" in settings.champion else f"{flow_name}/{settings.champion}"
    return next((run.pathspec for run in Flow(flow_name).runs(PROMOTED) if run.id != run_id), None)


def gate(data_split: DataSplit, bundle: bytes, champion: str | None, settings: PromotionSettings) -> Gate:
    """Score the new ``bundle`` and the ``champion`` run's bundle on ``data_split`` and decide. A
    champion that cannot be loaded blocks promotion (unless overridden): promoting past a model
    nobody could compare with would make the gate a formality."""
    challenger = score(Recommender.from_bytes(bundle), data_split)
    tolerances = {"ndcg_tolerance": settings.ndcg_tolerance, "rmse_tolerance": settings.rmse_tolerance,
                  "override": settings.override}
    if champion is None:
        return Gate(challenger, None, None, decide(challenger, None, **tolerances))
    try:
        theirs = score(Recommender.from_run(champion), data_split)
    except (BundleError, ValueError, OSError) as exc:
        why = f"the champion {champion} could not be scored: {exc}"
        decision = Decision(True, [f"promoted by override; {why}"], overridden=True) if settings.override else \
            Decision(False, [f"{why}; pass --promote-anyway to promote without the comparison"])
        return Gate(challenger, None, champion, decision, unreadable=why)
    return Gate(challenger, theirs, champion, decide(challenger, theirs, **tolerances))


def record(run_pathspec: str, version: str, result: Gate) -> list[str]:
    """Tag the run with what was published and whether it was promoted; returns the tags added."""
    from metaflow import Run

    tags = [f"published:{version}"]
    if result.decision.promote:
        tags.append(PROMOTED)
    if result.decision.overridden:
        tags.append(OVERRIDE)
    Run(run_pathspec).add_tags(tags)
    return tags
