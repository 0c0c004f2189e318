"""The content of each step's Metaflow card: what a person reviewing a run wants to see."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from movierec.core.protocols import get_protocol
from movierec.reports.components import bar_chart, heading, key_values, line_chart, table

if TYPE_CHECKING:  # the types only: the cards of light steps must not import torch
    from movierec.core.settings import RetrievalConfig
    from movierec.data import Dataset
    from movierec.data.split import DataSplit
    from movierec.models.index import RetrievalIndex
    from movierec.models.second_stage import Ranker
    from movierec.models.sources import SourceModels
    from movierec.training.evaluation import Report
    from movierec.training.rating_search import RankingResult
    from movierec.training.retrieval import RetrievalResult

# A card shows the best CARD_ROWS rows of a search's trials and the curves of its CARD_CURVES best
# trials: a card holds every point it charts, so a search of hundreds of trials made a card of
# thousands of rows, in each run's datastore. (Most of a card's 1.1 MB is Metaflow's own viewer,
# its JavaScript and CSS, which each card's HTML embeds; the content here is 1 to 7 KB a step.)
CARD_ROWS = 20
CARD_CURVES = 10


def settings_card(rows: list[dict[str, object]]) -> list:
    """The run's settings, and which came from the configuration file or the command line."""
    return [heading("Settings", ["From the `--config` file (default `flows/configs/default.json`), "
                                 "overridden by command-line options where `from` names one."]),
            table(rows, ["setting", "value", "from"])]


def data_card(dataset: Dataset, source: str) -> list:
    stats = dataset.stats()
    values, counts = np.unique(dataset.ratings["rating"].to_numpy(), return_counts=True)
    stars = [{"stars": float(v), "ratings": int(c)} for v, c in zip(values, counts)]
    per_user = np.bincount(np.unique(dataset.ratings["user_id"].to_numpy(), return_inverse=True)[1])
    genres = dataset.items["genres"].to_pylist()
    top_genres = {}
    for gs in genres:
        for g in gs or []:
            top_genres[g] = top_genres.get(g, 0) + 1
    implicit = ["**Implicit-only data**: who interacted with which movie, no ratings. No rating model is "
                "trained, the ranker goes without predicted stars, and no rating error (RMSE/MAE) is reported."]
    return [
        heading(f"Data: {dataset.name}", [f"Source: `{source}`", *(implicit if dataset.implicit else []),
                                          *(f"**Warning:** {note}" for note in dataset.warnings)]),
        key_values({**stats, "median ratings per user": float(np.median(per_user)) if len(per_user) else 0.0}),
        *([] if dataset.implicit else [bar_chart(stars, "stars", "ratings", "Rating distribution")]),
        table(sorted(({"genre": g, "movies": n} for g, n in top_genres.items()), key=lambda r: -r["movies"])[:20]),
        *([heading("Ratings users sent, by API key", [
            "Rows of the `--feedback-store` per key that wrote them (`movierec keys list` names the keys); "
            "`--feedback-leave-out` keeps a key's rows out of training."]),
           table(dataset.feedback_keys, ["key", "ratings", "training"])] if dataset.feedback_keys else []),
    ]


def split_card(data_split: DataSplit, protocol: str) -> list:
    enc, split = data_split.enc, data_split.split
    sent = split.feedback_train + split.feedback_left_out + split.feedback_outdated
    feedback = [f"Ratings users sent (`--feedback-store`): **{split.feedback_train:,}** of {sent:,} joined training "
                f"({split.feedback_replaced:,} of them replace the data's earlier rating of the same movie); "
                f"{split.feedback_left_out:,} rate a (user, movie) pair of the test split and were left out; "
                f"{split.feedback_outdated:,} are older than the data's rating of their pair. The test split is "
                "the data's own: feedback never enters it."] if sent else []
    return [
        heading(f"Split: protocol {protocol}", [get_protocol(protocol).description,
                f"Test ratings whose user{'' if get_protocol(protocol).cold else ' or movie'} never occurs in train "
                f"are dropped: **{split.dropped_test}**.",
                *feedback]),
        key_values({**split.summary(), "users": enc.n_users, "movies": enc.n_items,
                    **{f"vocabulary: {k}": v for k, v in enc.vocab_sizes.items()}}),
    ]


def retrieval_card(result: RetrievalResult, sources: SourceModels) -> list:
    return [
        heading("Candidate sources", ["Each chosen on the retrieval model's validation pairs (nDCG@10 of the source "
                                      "alone), then refitted on all training ratings."]),
        # The score before the hyperparameters: each source has its own, so they fill the columns to the right.
        table([{"source": name, "validation nDCG@10": chosen["val_ndcg"], **chosen["params"]}
               for name, chosen in sources.chosen.items()]),
        heading(f"{result.config.name} retrieval ({_trained_by(result)}, {_objective(result.config)})"),
        # the sizes the model trained with, where the settings leave them to the model (0)
        key_values({**asdict(result.config), "dim": result.config.embedding_dim(),
                    "epochs": result.epochs or result.config.max_epochs(),
                    "patience": result.patience or result.config.stop_after()}),
        *_search_card(result.search),
        line_chart(result.history, "epoch", "loss", "Training loss per epoch"),
        line_chart(result.history, "epoch", "val_dcg",
                   "Validation DCG per epoch (unseen movies; the best epoch's weights are kept)"),
        table(result.history),
    ]


def _objective(cfg: RetrievalConfig) -> str:
    """How the retrieval model learned, in a few words."""
    if cfg.per_user:
        return "a user as the movies they rated, softmax over the whole catalogue"
    return "in-batch softmax + logQ correction"


def _search_card(trials: list[dict]) -> list:
    """The trials that chose the retrieval settings above (none without --retrieval-trials)."""
    if not trials:
        return []
    ranked = sorted(trials, key=lambda row: -row["best_val_dcg"])
    return [heading("Retrieval settings search (Ray Tune, ASHA on validation DCG)",
                    [f"Trial {ranked[0]['trial']} of {len(trials)} chose the settings above (validation DCG "
                     f"**{ranked[0]['best_val_dcg']:.4f}**); the model then trained with them on all the fit "
                     "pairs (train less the validation pairs)."]),
            table(ranked[:CARD_ROWS])]


def _trained_by(result: RetrievalResult) -> str:
    """Where the retrieval model trained: Ray Train (on how many nodes), or the step's own process."""
    if not result.ray_train:
        return "one worker in the step's process: Ray Train spreads nothing there (--ray-train always uses it)"
    return f"Ray Train{f' on {result.nodes} nodes' if result.nodes > 1 else ''}"


def ranking_card(result: RankingResult | None) -> list:
    if result is None:
        return [heading("Rating model: skipped", ["The data is implicit-only (no rating column): there are no "
                                                  "stars to learn, so no rating model was searched and the "
                                                  "ranker orders candidates without a predicted rating."])]
    ranked = sorted(result.trials, key=lambda r: r["best_val_rmse"])
    charted = {r["trial"] for r in ranked[:CARD_CURVES]}
    curves = [{k: c[k] for k in ("trial", "epoch", "val_rmse")} for c in result.curves if c["trial"] in charted]
    some = f" (the {CARD_CURVES} best of {len(ranked)})" if len(ranked) > CARD_CURVES else ""
    return [
        heading("Rating model search (ASHA)",
                [f"Best validation RMSE **{result.val_rmse:.4f}** with {result.params}. Trials: "
                 + ("Ray Tune" if result.ray_tune else "one after another in the step's process: Ray's start-up "
                    "would cost more than it spreads (--ray-tune always uses it)") + "."]),
        line_chart(curves, "epoch", "val_rmse", f"Validation RMSE per epoch, by trial{some}", color="trial"),
        table(ranked[:CARD_ROWS]),
        *([heading("Blend with biased matrix factorisation (ALS-WR)",
                   [f"Weight of the rating model **{result.blend['weight']:.3f}**, MF regularisation "
                    f"{result.blend['regularization']}: validation RMSE {result.blend['model_val_rmse']:.4f} -> "
                    f"**{result.blend['val_rmse']:.4f}**."]),
           table(result.blend["tried"])] if result.blend else []),
    ]


def ranker_card(ranker: Ranker) -> list:
    weights = dict(zip(ranker.features, (float(w) for w in ranker.weights)))
    return [
        heading("Second stage: learned ranker over the sources' candidates",
                [f"Score = weighted sum of the standardised {', '.join(ranker.features)}; weights fitted by a "
                 f"listwise softmax loss on 70% of the validation users, its L2 penalty chosen on the "
                 f"other 30% (held-out nDCG@10 **{ranker.val_ndcg:.4f}**), then refitted on all of them; "
                 f"{ranker.candidates} candidates per source."]),
        key_values(weights),
        table(ranker.trials[:CARD_ROWS]),
    ]


def index_card(index: RetrievalIndex) -> list:
    return [
        heading("Annoy index", [f"Recall@100 against exact dot-product search: **{index.quality.recall_at_100:.4f}**"]),
        key_values({**asdict(index.settings), **asdict(index.quality)}),
    ]


def evaluation_card(report: Report, protocol: str) -> list:
    p = get_protocol(protocol)
    skipped = ["Implicit-only data: no rating model, so no RMSE/MAE, and no global-mean baseline (it only "
               "predicts ratings)."] if report.implicit else []
    cards = [
        heading(f"Evaluation on the test split (protocol {protocol})",
                [p.description,
                 "top-K: share of test ratings whose movie is in the user's top K of all movies (TFRS "
                 f"categorical accuracy; of the retrieval model for the two-stage rows). NDCG/P/R@{report.ndcg_k}: "
                 f"recommendations of unseen movies ({report.candidates} candidates per source, re-ranked by the "
                 "learned ranker in the two-stage rows), every held-out movie relevant. '—': not applicable.",
                 f"Test users: {report.test_users:,}; the Annoy row is scored on "
                 + ("all of them." if report.annoy_users >= report.test_users
                    else f"a uniform sample of {report.annoy_users:,} (Annoy answers one query at a time)."),
                 *skipped]),
        table([dict(zip(report.columns(), row)) for row in report.cells()], report.columns()),
        heading("Candidate recall", [f"Share of each test user's held-out movies among the candidates "
                                     f"({report.union_size:.0f} in the union on average)."]),
        key_values({name: f"{value:.4f}" for name, value in report.recall.items()}),
    ]
    if report.cold:
        k = report.ndcg_k
        cards += [heading("Movies nobody rated in training", [
            f"The {report.cold_items:,} movies of the test split without a training rating, ranked among themselves "
            f"for each test user (NDCG/P/R@{k}; a user's held-out ratings of them relevant). Only a model that reads "
            "a movie's genres, title and year can score them: EASEᴿ, ALS, LightGCN and the peers know a movie by "
            "its ratings alone."]),
            table([{"model": r["model"], **{c: f"{r[c]:.4f}" for c in (f"ndcg@{k}", f"p@{k}", f"r@{k}")}}
                   for r in report.cold])]
    if p.others():
        cards += [heading("Other systems on this protocol (not this run)"), table(p.others())]
    cards.append(heading("Sample recommendations"))
    for s in report.samples:
        hits = set(s["held_out_hits"])
        cards.append(heading(f"User {s['user_id']}", ["Rated in train: " + "; ".join(s["rated_in_train"])]))
        cards.append(table([{"rank": i + 1, "recommended": t, "held out (hit)": "yes" if t in hits else ""}
                            for i, t in enumerate(s["recommended"])]))
    return cards


def publish_card(publication: dict, bundle_size: int, promotion: dict) -> list:
    status = "uploaded to" if publication["uploaded"] else "was already in"
    return [
        heading(f"Published movierec {publication['version']}",
                [f"The wheel {status} `{publication['repository']}`.",
                 f"Install it anywhere: `{publication['install_command']}`",
                 "Then: `movierec recommend --user 1` or `from movierec import Recommender`."]),
        key_values({**publication, "bundle size (MB)": bundle_size / 1e6,
                    "wheel size (MB)": publication["size"] / 1e6}),
        *promotion_card(promotion),
    ]


def promotion_card(promotion: dict) -> list:
    """Challenger against champion on this run's test split, and the gate's decision."""
    decision = promotion["decision"]
    champion = promotion["champion_run"] or "none yet"
    rows = [{"model": "challenger (this run)", **promotion["challenger"]}]
    if promotion["champion"] is not None:
        rows.append({"model": f"champion ({champion})", **promotion["champion"]})
    verdict = ("promoted: `end` tags the run `promoted`" if decision["promote"] else
               "not promoted: the run is tagged `published:<version>` only, and `--model promoted` keeps serving "
               "the champion (an install of the newest wheel does not: aliases in the package repository are not "
               "built yet)")
    return [heading(f"Promotion gate: {verdict}", [f"Champion: `{champion}`.", *decision["reasons"]]),
            table(rows, ["model", "ndcg", "rmse", "rated_pairs", "seen_test"])]


def finished_lines(run_id: str, publication: dict, metrics: list[dict], flow_file: str) -> list[str]:
    """What a finished run printed and its last card say: the headline metrics and what to do next
    (``flow_file``: the flow's file, whose command shows the report)."""
    ours = next((m for m in metrics if m.get("model") == "two-stage (exact retrieval)"), {})
    figures = ", ".join(f"{k} {ours[k]:.4f}" for k in ("ndcg@10", "r@10", "top100", "rmse") if ours.get(k) is not None)
    return [f"run {run_id} finished" + (f": two-stage {figures}" if figures else "."),
            f"report:  python flows/{Path(flow_file).name} card view evaluate --run-id {run_id}",
            f"install: {publication['install_command']}",
            "then:    movierec recommend --user 1"]


def finished_card(lines: list[str]) -> list:
    return [heading("Run finished", [f"`{line}`" for line in lines])]
