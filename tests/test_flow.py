"""The whole flow through metaflow.Runner (the ``runs`` fixture in conftest): a fault injected in
one step, then resume finishing it, checked for reused tasks, artifacts, metrics and cards."""

import base64
import re

import pytest
from metaflow import Flow
from metaflow.cards import get_cards

from movierec.serving.bundle import read_bundle

FINISHED_BEFORE_FAULT = ("start", "split", "train_retrieval", "tune_ranking", "build_index", "train_ranker")


def card_text(task) -> str:
    """The decoded content of a task's card (Metaflow embeds it base64-encoded in the HTML)."""
    html = get_cards(task)[0].get()
    blobs = re.findall(r'__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html)
    assert blobs, "no card data in the HTML"
    return " ".join(base64.b64decode(b).decode() for b in blobs)


def test_injected_fault_fails_the_run(runs):
    failed_status, failed_run, *_ = runs
    assert failed_status == "failed"
    assert not failed_run.successful
    assert [s.id for s in failed_run if s.id == "evaluate"]  # it reached the faulty step


def test_resume_reuses_finished_tasks(runs):
    _, failed_run, resumed_status, resumed_run, stdout = runs
    assert resumed_status == "successful", stdout[-3000:]
    assert resumed_run.successful and resumed_run.id != failed_run.id
    for name in FINISHED_BEFORE_FAULT:
        task = resumed_run[name].task
        assert task.origin_pathspec is not None, name
        assert task.origin_pathspec.split("/")[1] == failed_run.id, name
    assert resumed_run["evaluate"].task.origin_pathspec is None  # really re-ran


def test_artifacts_and_metrics_beat_popularity(runs):
    run = runs[3]
    assert run["start"].task.data.data_stats["ratings"] == 100_000
    metrics = {row["model"]: row for row in run["evaluate"].task.data.metrics}
    ours, pop = metrics["two-stage (exact retrieval)"], metrics["popularity baseline"]
    assert ours["top100"] > pop["top100"]
    assert ours["ndcg@10"] > pop["ndcg@10"]
    assert ours["rmse"] < metrics["global-mean baseline"]["rmse"]
    assert run["build_index"].task.data.retrieval_index.quality.recall_at_100 > 0.9
    history = run["train_retrieval"].task.data.retrieval.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    bundle = run["publish"].task.data.bundle
    meta = read_bundle(bundle)[0]
    assert meta["run_id"] == run.id and meta["sizes"]["item"] == 1682


def test_publish_gates_the_model_by_what_evaluate_measured_and_end_tags_the_run(runs):
    """The promotion gate in publish: it scored the published bundle as it serves to the figures
    evaluate reported; end tagged the run with its version and, the gate letting it, promoted (the
    failed run, which never published, has neither); `--model promoted` serves the latest
    promotion; and a model exactly like the champion is promoted against it (equal scores)."""
    from movierec.core.settings import PromotionSettings
    from movierec.serving.bundle import PROMOTED, bundle_of_run, promoted_runs
    from movierec.training import promotion

    _, failed_run, _, resumed, _ = runs
    publish = resumed["publish"].task.data
    assert publish.promotion["decision"]["promote"]
    assert {f"published:{publish.publication['version']}", PROMOTED} <= set(resumed.user_tags)
    assert resumed["end"].task.data.run_tags == [f"published:{publish.publication['version']}", PROMOTED]
    assert not any(tag.startswith("published:") for tag in failed_run.user_tags)
    assert resumed.pathspec in [run.pathspec for run in promoted_runs()]
    assert bundle_of_run(PROMOTED)[0] == promoted_runs()[0].pathspec
    metrics = {row["model"]: row for row in resumed["evaluate"].task.data.metrics}
    served = metrics["two-stage (Annoy retrieval)"]
    assert publish.promotion["challenger"]["ndcg"] == pytest.approx(served["ndcg@10"], abs=1e-9)
    assert publish.promotion["challenger"]["rmse"] == pytest.approx(served["rmse"], abs=1e-6)
    again = promotion.gate(publish.data_split, publish.bundle, resumed.pathspec, PromotionSettings())
    assert again.champion == again.challenger and again.decision.promote
    # the champion lookup keeps to the run's dataset and project branch
    branch = next(t.removeprefix("project_branch:") for t in resumed.system_tags if t.startswith("project_branch:"))
    found = promotion.champion_run("RecommenderFlow", "0", PromotionSettings(), branch=branch, dataset="ml-100k")
    assert found is not None and found in [run.pathspec for run in promoted_runs()]
    assert promotion.champion_run("RecommenderFlow", "0", PromotionSettings(), branch=branch, dataset="other") is None
    assert promotion.champion_run("RecommenderFlow", "0", PromotionSettings(), branch="test.x", dataset=None) is None


def test_a_movie_added_to_the_served_model_reaches_users_whose_taste_matches_it(runs):
    """Issue 27's goal on the ML-100K model: a new science-fiction film much like the one its users are
    recommended most (its genres, era and title words, its features alone) lands in the top-10 of
    users who rate science fiction more than the rest do."""
    import numpy as np

    from movierec.serving.recommender import Recommender

    rec = Recommender.from_bytes(runs[3]["publish"].task.data.bundle)
    b = rec.bundle
    sci_fi = np.array(["Sci-Fi" in g for g in b.genres])
    listed = np.array([rec._movie(r.movie_id) for u in b.user_ids for r in rec.recommend(int(u), 10)])
    m = int(np.argmax(np.bincount(listed, minlength=len(sci_fi)) * sci_fi))
    added = rec.add_movie(10**6, f"{b.titles[m]}: The Return", b.genres[m], int(b.years[m]))
    assert "Sci-Fi" in added.nearest.genres
    share = np.array([sci_fi[rec._rated_by(u)].mean() for u in range(len(b.user_ids))])
    reached = np.array([10**6 in [r.movie_id for r in rec.recommend(int(u), 10)] for u in b.user_ids])
    assert reached.mean() >= 0.01, (b.titles[m], added.nearest.title, reached.sum())
    assert share[reached].mean() >= 1.2 * share[~reached].mean(), (share[reached].mean(), share[~reached].mean())


def test_every_step_has_a_card(runs):
    run = runs[3]
    for step in run:
        cards = get_cards(step.task)
        assert len(cards) >= 1, step.id
    text = card_text(run["evaluate"].task)
    for expected in ("Evaluation on the test split", "popularity baseline", "Sample recommendations", "Star Wars"):
        assert expected in text, expected
    assert "Validation RMSE per epoch" in card_text(run["tune_ranking"].task)
    assert "Recall@100 against exact" in card_text(run["build_index"].task)
    assert "Training loss per epoch" in card_text(run["train_retrieval"].task)
    assert "Candidate sources" in card_text(run["train_retrieval"].task)
    assert "Second stage: learned ranker" in card_text(run["train_ranker"].task)
    assert "Candidate recall" in card_text(run["evaluate"].task)
    assert run["publish"].task.data.publication["install_command"] in card_text(run["end"].task)


def test_latest_run_is_the_resumed_one(runs):
    """Resume is a new run, newer than the failed one (what ``latest_run`` and the CLI in a checkout
    take). Other modules start runs of their own later (test_feedback's retrain), so only the runs
    up to the resumed one are compared: the first of them, newest first, must be it."""
    resumed = runs[3]
    newest_first = [r.id for r in Flow("RecommenderFlow") if r.created_at <= resumed.created_at]
    assert newest_first[0] == resumed.id and runs[1].id in newest_first[1:]


def test_light_steps_do_not_import_torch():
    """Every step and every card runs in a fresh process that imports the flow file; torch costs
    each of them 1.5 s, so only the steps that train or score may pull it in."""
    import subprocess
    import sys
    from pathlib import Path

    flows = Path(__file__).resolve().parents[1] / "flows"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import recommender_flow; "
            "from movierec import pipeline; from movierec.core import settings; from movierec.reports import cards; "
            "pipeline.load_data(settings.Settings(data=settings.DataSettings(synthetic_ratings=500))); "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(flows)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_code_package_carries_movierec_and_what_publishing_builds_from(tmp_path, metaflow_root, tiny_bundle):
    """A remote step (Kubernetes, Batch) runs from the code package alone: it held only the flow
    file, so `from movierec import ...` failed in the pod, and publish wanted a source checkout.
    ``flows/`` links the package, setup.cfg, pyproject.toml and README.md in (Metaflow packages
    what a link points to). Unpacked and run from its own folder, as a pod runs it, every module
    comes from the package and publishing builds a complete wheel there."""
    import os
    import subprocess
    import sys
    import tarfile
    import zipfile
    from pathlib import Path

    from conftest import FLOW

    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": metaflow_root}
    subprocess.run([sys.executable, FLOW, "--no-pylint", "package", "save", str(tmp_path / "code.tgz")], env=env,
                   check=True, capture_output=True)
    with tarfile.open(tmp_path / "code.tgz") as tar:
        tar.extractall(tmp_path / "pod", filter="data")
    pod = tmp_path / "pod"
    source = Path(__file__).resolve().parents[1] / "movierec"
    assert sorted(p.relative_to(pod / "movierec").as_posix() for p in (pod / "movierec").rglob("*.py")) == sorted(
        p.relative_to(source).as_posix() for p in source.rglob("*.py"))
    (tmp_path / "bundle.zip").write_bytes(tiny_bundle)
    code = ("import movierec.pipeline, movierec.training.retrieval, movierec.models.rating_model, sys; "
            "from pathlib import Path; from movierec.training import packaging; "
            "print(sorted({m.__file__ for n, m in sys.modules.items() if n.startswith('movierec')})); "
            "print(packaging.build_wheel(Path(sys.argv[1]).read_bytes(), '0.1.0.post9', Path(sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bundle.zip"), str(tmp_path / "wheel")],
                         cwd=pod, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    files, wheel = eval(lines[0]), lines[-1]  # noqa: S307 - a list of paths this test's own subprocess printed
    assert files and all(f.startswith(str(pod)) for f in files), files
    names = zipfile.ZipFile(wheel).namelist()
    assert {"movierec/serving/web/index.html", "movierec/bundle/model.json", "movierec/cli.py"} <= set(names)


def test_cli_in_a_checkout_serves_the_latest_successful_run(runs, metaflow_root):
    """After `make run`, `movierec serve` in the checkout said "no model": it now takes the latest
    successful run of the local datastore."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "movierec.cli", "info"], capture_output=True, text=True,
                          cwd=metaflow_root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["run_id"] == Flow("RecommenderFlow").latest_successful_run.id


def test_implicit_only_data_runs_without_a_rating_model(metaflow_root, ml100k_dir, tmp_path):
    """An interactions file without a rating column (ML-100K's (user, movie, time) triples): the
    flow skips the rating model and says so in tune_ranking's card, reports no rating error, the
    ranker orders without predicted stars and still beats popularity, and the published model
    recommends without predicting ratings. Last in this module: its run must not be the latest one
    the tests above look for."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import BUDGET, FLOW
    from metaflow import Runner

    from movierec import data
    from movierec.serving.recommender import NoRatingModelError, Recommender

    ml = data.load_dataset(ml100k_dir)
    pq.write_table(pa.table({"user": ml.ratings["user_id"], "item": ml.ratings["item_id"],
                             "timestamp": ml.ratings["timestamp"]}), tmp_path / "views.parquet")
    pq.write_table(pa.table({"item": ml.items["item_id"], "title": ml.items["title"], "genres": ml.items["genres"]}),
                   tmp_path / "movies.parquet")
    with Runner(FLOW, show_output=False, pylint=False, cwd=metaflow_root).run(
            **BUDGET, data_dir=str(tmp_path / "views.parquet"), items_file=str(tmp_path / "movies.parquet"),
            rating_column="", index_dir=str(tmp_path / "pypi")) as running:
        assert running.status == "successful", (running.stdout + running.stderr)[-3000:]
        assert "[tune_ranking] implicit-only data (no ratings): no rating model" in running.stdout
        run = running.run
    assert run["start"].task.data.data_stats["implicit"] is True
    assert run["tune_ranking"].task.data.ranking is None
    assert "Rating model: skipped" in card_text(run["tune_ranking"].task)
    assert "Implicit-only data" in card_text(run["start"].task)
    assert "no RMSE/MAE" in card_text(run["evaluate"].task)
    assert run["train_ranker"].task.data.ranker.features == ("retrieval", "ease", "als", "popularity")
    metrics = {row["model"]: row for row in run["evaluate"].task.data.metrics}
    assert "global-mean baseline" not in metrics and all(row["rmse"] is None for row in metrics.values())
    assert metrics["two-stage (exact retrieval)"]["ndcg@10"] > metrics["popularity baseline"]["ndcg@10"]
    rec = Recommender.from_bytes(run["publish"].task.data.bundle)
    user = int(rec.user_ids[0])
    picks = rec.recommend(user, k=10)
    assert len(picks) == 10 and all(r.predicted_rating is None for r in picks)
    assert not {r.movie_id for r in picks} & set(rec.rated(user))
    with pytest.raises(NoRatingModelError):
        rec.predict_rating(user, picks[0].movie_id)
