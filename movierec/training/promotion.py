"""The promotion gate: a newly trained model (the challenger) against the one in production (the
champion), both scored on the challenger's test split by the same code, and the decision whether
the challenger may replace it.

Both are scored as they serve: through ``Recommender`` on their bundles, so the comparison holds
whatever either was trained with (another version of movierec, other settings, less data). Each
test user's top-10 leaves out the movies the user rated in the challenger's training split, for
both models alike; a user a model does not know is recommended from those ratings (with their
stars), as the API recommends for a new user. RMSE is compared over the test ratings both models
can rate.

A champion trained on other data may have trained on some of the challenger's test ratings: its
figures are then optimistic (it may rank and rate what it has seen), and the gate errs towards
keeping it. ``Scores.seen_test`` counts such ratings so the card can say so.

Where the models are kept: Metaflow run tags are the registry. The ``end`` step tags a run
``published:<version>``, and ``promoted`` when the gate let it (``promotion-override`` when only
``--promote-anyway`` did); tagging at the end, once ``publish`` has stored the bundle, keeps a run
whose publish failed from becoming a champion nobody can load. The champion is the latest
promotion (``serving.bundle.promoted_runs``) of the same project branch and dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from movierec.core import metrics
from movierec.core.settings import PromotionSettings
from movierec.data.split import DataSplit
from movierec.errors import RecommenderError
from movierec.serving.bundle import PROMOTED, PUBLISHED, bundle_of_run, promoted_runs
from movierec.serving.recommender import Recommender
from movierec.training.evaluation import Evaluator

K = 10
MAX_USERS = 10_000  # test users each model is scored on (a seeded sample beyond)
OVERRIDE = "promotion-override"  # run tag


@dataclass(frozen=True)
class Scores:
    """A model's figures on a test split: nDCG@10 over the test users, RMSE over the test ratings
    compared (None: not compared; ``rated_pairs`` says over how many it was), and how many test
    ratings its bundle lists as rated in its own training (``seen_test``; 0 for the challenger)."""

    ndcg: float
    rmse: float | None
    rated_pairs: int
    seen_test: int


class TestSplit:
    """The test split as every model is scored on it: its users (all, or the Evaluator's seeded
    sample of ``max_users``), their training ratings, and those users' test ratings."""

    def __init__(self, data_split: DataSplit, max_users: int = MAX_USERS):
        enc, split = data_split.enc, data_split.split
        self.enc, self.evaluator = enc, Evaluator(enc, split, annoy_users=max_users)
        self.users = self.evaluator.annoy_users
        sampled = np.isin(self.evaluator.test_users, self.users)
        self.pair_users = enc.user_ids[self.evaluator.test_users[sampled]]
        self.pair_movies = enc.item_ids[self.evaluator.test_items[sampled]]
        self.pair_stars = self.evaluator.test_ratings[sampled]
        train = split.train[np.argsort(enc.user_idx[split.train], kind="stable")]
        self._train_ptr = np.searchsorted(enc.user_idx[train], np.arange(enc.n_users + 1))
        self._train_movies, self._train_stars = enc.item_ids[enc.item_idx[train]], enc.rating[train]
        test = np.flatnonzero(sampled)
        test = test[np.argsort(self.evaluator.test_users[test], kind="stable")]
        self._test_ptr = np.searchsorted(self.evaluator.test_users[test], np.append(self.users, enc.n_users))
        self._test_movies = enc.item_ids[self.evaluator.test_items[test]]

    def trained(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """(movie ids, stars) of user index ``u``'s training ratings."""
        a, b = self._train_ptr[u], self._train_ptr[u + 1]
        return self._train_movies[a:b], self._train_stars[a:b]

    def tested(self, row: int) -> np.ndarray:
        """The movie ids of the test ratings of ``users[row]``."""
        return self._test_movies[self._test_ptr[row]: self._test_ptr[row + 1]]


@dataclass
class Served:
    """One model's answers on a :class:`TestSplit`: nDCG@10, its rating of each test pair there
    (NaN where it cannot rate; None without a rating model), and ``seen_test``."""

    ndcg: float
    ratings: np.ndarray | None
    seen_test: int

    def scores(self, compared: np.ndarray | None, stars: np.ndarray) -> Scores:
        """Its :class:`Scores`, the RMSE over the ``compared`` pairs (None: not compared)."""
        if compared is None or self.ratings is None or not compared.any():
            return Scores(self.ndcg, None, 0, self.seen_test)
        return Scores(self.ndcg, metrics.rmse(self.ratings[compared], stars[compared]), int(compared.sum()),
                      self.seen_test)


def serve(rec: Recommender, test: TestSplit) -> Served:
    """``rec``'s top-10 for every user of ``test`` and its rating of every test pair."""
    enc = test.enc
    position = {int(m): i for i, m in enumerate(enc.item_ids)}
    lists = np.full((len(test.users), K), -1, np.int64)
    seen_test = 0
    for row, u in enumerate(test.users):
        user, (movies, stars) = int(enc.user_ids[u]), test.trained(u)
        known = np.isin(movies, rec.bundle.item_ids)
        try:
            if rec.knows_user(user):
                recs = rec.recommend(user, K, exclude_rated=False, also_exclude=movies[known].tolist())
                seen_test += len(np.intersect1d(test.tested(row), rec.rated(user)))
            elif known.any():
                history = movies[known].tolist() if enc.implicit else list(zip(movies[known].tolist(),
                                                                              stars[known].tolist()))
                recs = rec.recommend_for_history(history, K)
            else:
                continue  # nothing to recommend from: an empty list scores 0, as for any model
        except RecommenderError:  # e.g. no training rating above 2.5 stars to take a taste from
            continue
        ids = [position.get(r.movie_id, -1) for r in recs]
        lists[row, : len(ids)] = ids
    ratings = None
    if not rec.bundle.implicit and not enc.implicit:
        known_users = np.isin(test.pair_users, rec.bundle.user_ids) if rec.bundle.user_data else \
            np.zeros(len(test.pair_users), bool)
        rateable = known_users & np.isin(test.pair_movies, rec.bundle.item_ids)
        ratings = np.full(len(test.pair_users), np.nan)
        if rateable.any():
            ratings[rateable] = rec.predict_ratings(test.pair_users[rateable].tolist(),
                                                    test.pair_movies[rateable].tolist())
    return Served(test.evaluator.ranking(lists, test.users)[f"ndcg@{test.evaluator.ndcg_k}"], ratings, seen_test)


def _rateable(served: Served) -> np.ndarray | None:
    return None if served.ratings is None else np.isfinite(served.ratings)


def score(rec: Recommender, data_split: DataSplit, *, max_users: int = MAX_USERS) -> Scores:
    """``rec``'s :class:`Scores` on ``data_split``'s test split alone, RMSE over every test rating
    it can rate, by the metric code the flow's ``evaluate`` uses."""
    test = TestSplit(data_split, max_users)
    served = serve(rec, test)
    return served.scores(_rateable(served), test.pair_stars)


def compare(challenger: Recommender, champion: Recommender, data_split: DataSplit, *,
            max_users: int = MAX_USERS) -> tuple[Scores, Scores]:
    """Both models' :class:`Scores` on the same users and, for RMSE, the test ratings both can rate."""
    test = TestSplit(data_split, max_users)
    ours, theirs = serve(challenger, test), serve(champion, test)
    a, b = _rateable(ours), _rateable(theirs)
    both = None if a is None or b is None else a & b
    return ours.scores(both, test.pair_stars), theirs.scores(both, test.pair_stars)


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
    regressions, notes = [], []
    if challenger.ndcg < champion.ndcg - ndcg_tolerance:
        regressions.append(f"nDCG@10 {challenger.ndcg:.4f} is {champion.ndcg - challenger.ndcg:.4f} below the "
                           f"champion's {champion.ndcg:.4f} (tolerance {ndcg_tolerance:g})")
    if challenger.rmse is None or champion.rmse is None:
        notes.append("RMSE not compared: no test rating both models can rate (implicit data, or a model without "
                     "its users)")
    elif challenger.rmse > champion.rmse + rmse_tolerance:
        regressions.append(f"RMSE {challenger.rmse:.4f} is {challenger.rmse - champion.rmse:.4f} above the "
                           f"champion's {champion.rmse:.4f} (tolerance {rmse_tolerance:g})")
    if champion.seen_test:
        notes.append(f"the champion trained on {champion.seen_test} of these test ratings: its figures are "
                     "optimistic")
    if not regressions:
        return Decision(True, [f"not worse than the champion beyond the tolerances (nDCG@10 {challenger.ndcg:.4f} "
                               f"against {champion.ndcg:.4f})", *notes])
    if override:
        return Decision(True, ["promoted by override despite: " + "; ".join(regressions), *notes], overridden=True)
    return Decision(False, regressions + notes)


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


def champion_run(flow_name: str, run_id: str, settings: PromotionSettings, *, branch: str | None = None,
                 dataset: str | None = None) -> str | None:
    """The pathspec of the run the new one (``flow_name/run_id``) is gated against:
    ``settings.champion``, or the latest other promotion in the current namespace of the same
    project ``branch`` and ``dataset`` (the name ``start`` recorded): a model of other data or of
    another branch's experiment is no champion of this one."""
    if settings.champion:
        return settings.champion if "/" in settings.champion else f"{flow_name}/{settings.champion}"
    for run in promoted_runs(flow_name):
        if run.id == run_id or (branch is not None and f"project_branch:{branch}" not in run.system_tags):
            continue
        if dataset is None or run["start"].task.data.data_stats.get("name") == dataset:
            return run.pathspec
    return None


def gate(data_split: DataSplit, bundle: bytes, champion: str | None, settings: PromotionSettings) -> Gate:
    """Score the new ``bundle`` beside the ``champion`` run's bundle on ``data_split`` and decide.
    A champion that cannot be loaded or scored blocks promotion (unless overridden): promoting past
    a model nobody could compare with would make the gate a formality."""
    ours = Recommender.from_bytes(bundle)
    tolerances = {"ndcg_tolerance": settings.ndcg_tolerance, "rmse_tolerance": settings.rmse_tolerance,
                  "override": settings.override}
    if champion is None:
        challenger = score(ours, data_split)
        return Gate(challenger, None, None, decide(challenger, None, **tolerances))
    try:
        theirs = Recommender.from_bytes(bundle_of_run(champion)[1])
        challenger, champion_scores = compare(ours, theirs, data_split)
    except Exception as exc:  # noqa: BLE001 - any failure to load or score the champion is reported, not raised
        why = f"the champion {champion} could not be scored: {type(exc).__name__}: {exc}"
        decision = Decision(True, [f"promoted by override; {why}"], overridden=True) if settings.override else \
            Decision(False, [f"{why}; pass --promote-anyway to promote without the comparison"])
        return Gate(score(ours, data_split), None, champion, decision, unreadable=why)
    return Gate(challenger, champion_scores, champion, decide(challenger, champion_scores, **tolerances))


def record(run_pathspec: str, version: str, promotion: dict) -> list[str]:
    """Tag the run with what it published and whether the gate (``Gate.to_dict``) promoted it;
    returns the tags added."""
    from metaflow import Run

    decision = promotion["decision"]
    tags = [f"{PUBLISHED}{version}", *([PROMOTED] if decision["promote"] else []),
            *([OVERRIDE] if decision["overridden"] else [])]
    Run(run_pathspec).add_tags(tags)
    return tags
