"""RecommenderFlow: a two-stage movie recommender, trained, evaluated and versioned end to end.

    python flows/recommender_flow.py run                       # ML-100K, default budgets
    python flows/recommender_flow.py --config config flows/configs/lightgcn.json run --tune-samples 2
    python flows/recommender_flow.py run --data-dir ~/ml-25m   # a GroupLens download
    python flows/recommender_flow.py resume                    # continue a failed run
    python flows/recommender_flow.py card view evaluate        # the metrics report

Each step is a call into ``movierec.pipeline`` plus its card. Every setting is a command-line
option (``run --help``), added with its checks by ``flowconfig.configured``, which also wraps each
step in fault injection (for tests) and a timing line.
"""

import os
import sys
import time

# Metaflow takes the user from the environment and refuses "root"; shells without a usable name
# (CI, containers) would stop with "Unknown user", so they run as "movierec".
if not any(os.environ.get(v, "root") != "root" for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
    os.environ["METAFLOW_USER"] = "movierec"

# The code package a remote step runs from carries, besides the flow and the movierec package
# (flows/movierec links it), what publishing builds the wheel from: setup.cfg, pyproject.toml and
# README.md (linked here too) and the web page (movierec/web/index.html).
_suffixes = os.environ.get("METAFLOW_DEFAULT_PACKAGE_SUFFIXES", ".py,.R,.RDS").split(",")
os.environ["METAFLOW_DEFAULT_PACKAGE_SUFFIXES"] = ",".join(
    dict.fromkeys([*_suffixes, ".py", ".cfg", ".toml", ".md", ".html"]))

from metaflow import Config, FlowSpec, card, current, project, step  # noqa: E402

from movierec import flowconfig, pipeline, reports  # noqa: E402


@project(name="movierec")  # deployments per branch: argo-workflows create --branch / --production
@flowconfig.configured
class RecommenderFlow(FlowSpec):
    """Load → split → (train retrieval + sources ∥ tune rating model) → build Annoy index → train ranker →
    evaluate → publish."""

    config = Config("config", default_value=flowconfig.defaults(), parser="movierec.flowconfig.parse",
                    help="settings file (JSON or YAML, see flows/configs/); each setting's option overrides its value")

    @card
    @step
    def start(self):
        self.settings = flowconfig.settings_of(self)
        self.started_us = time.time_ns() // 1000  # the published wheel's version (pipeline.version_time)
        dataset = pipeline.load_data(self.settings)
        self.dataset, self.data_stats = dataset.to_bytes(), dataset.stats()
        print(f"[start] {dataset.name}: {self.data_stats}")
        origin = self.settings.data.dir or self.settings.data.source or dataset.name
        current.card.extend(reports.data_card(dataset, origin))
        current.card.extend(reports.settings_card(flowconfig.sources(self.settings, self.config)))
        self.next(self.split)

    @card
    @step
    def split(self):
        self.data_split = pipeline.split_data(self.dataset, self.settings)
        print(f"[split] {self.data_split.split.summary()}")
        current.card.extend(reports.split_card(self.data_split, self.settings.protocol))
        self.next(self.train_retrieval, self.tune_ranking)

    @card
    @step
    def train_retrieval(self):
        self.retrieval = pipeline.train_retrieval(self.data_split, self.settings, pipeline.ray_storage(self),
                                                  beside_tuning=True)
        self.sources = pipeline.fit_sources(self.data_split, self.settings)
        current.card.extend(reports.retrieval_card(self.retrieval, self.sources))
        self.next(self.build_index)

    @card
    @step
    def tune_ranking(self):
        self.ranking = pipeline.tune_ranking(self.data_split, self.settings, pipeline.ray_storage(self))
        current.card.extend(reports.ranking_card(self.ranking))
        self.next(self.build_index)

    @card
    @step
    def build_index(self, inputs):
        self.merge_artifacts(inputs)
        self.retrieval_index = pipeline.build_index(self.retrieval, self.settings)
        current.card.extend(reports.index_card(self.retrieval_index))
        self.next(self.train_ranker)

    @card
    @step
    def train_ranker(self):
        self.ranker = pipeline.train_ranker(self.data_split, self._stages(), self.settings, pipeline.ray_storage(self))
        current.card.extend(reports.ranker_card(self.ranker))
        self.next(self.evaluate)

    @card
    @step
    def evaluate(self):
        report = pipeline.evaluate(self.data_split, self._stages())
        self.metrics, self.samples = report.rows, report.samples
        print(report.to_text())
        current.card.extend(reports.evaluation_card(report, self.settings.protocol))
        self.next(self.publish)

    @card
    @step
    def publish(self):
        # a resumed run has start's time cloned from the run it resumed: it gets a version of its own,
        # the same in every retry of this step
        started_us = pipeline.publish_time(getattr(self, "started_us", None))
        run = {"flow": current.flow_name, "run_id": current.run_id, "started_us": started_us,
               "dataset": self.data_stats, "metrics": self.metrics}
        self.bundle, publication, self.wheel = pipeline.publish(self.data_split, self._stages(), self.settings, run)
        self.publication = publication.to_dict()
        current.card.extend(reports.publish_card(self.publication, len(self.bundle)))
        self.next(self.end)

    @card(type="blank")  # the default card would render every artifact of the run again, bundle included
    @step
    def end(self):
        lines = reports.finished_lines(current.run_id, self.publication, self.metrics, sys.argv[0])
        print("[end] " + "\n  ".join(lines))
        current.card.extend(reports.finished_card(lines))

    def _stages(self):
        """Both stages' trained parts as one value (the ranker once it is trained)."""
        return pipeline.stages(self.retrieval, self.retrieval_index, self.sources, self.ranking,
                               getattr(self, "ranker", None))


if __name__ == "__main__":
    RecommenderFlow()
