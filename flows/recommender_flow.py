"""RecommenderFlow: a two-stage movie recommender, trained, evaluated and versioned end to end.

    python flows/recommender_flow.py run                       # ML-100K, default budgets
    python flows/recommender_flow.py --config config flows/configs/lightgcn.json run --tune-samples 2
    python flows/recommender_flow.py run --data-dir ~/ml-25m   # a GroupLens download
    python flows/recommender_flow.py resume                    # continue a failed run
    python flows/recommender_flow.py card view evaluate        # the metrics report

Each step is a call into ``movierec.pipeline`` plus its card. Every setting is a command-line
option (``run --help``), added with its checks by ``flowconfig.configured``, which also wraps each
step in fault injection (for tests), a timing line, and hands on the inputs a step only read as
they are stored (each artifact is stored once per run).
"""

import os
import sys
import time

# Metaflow takes the user from the environment and refuses "root"; shells without a usable name
# (CI, containers) would stop with "Unknown user", so they run as "movierec".
if not any(os.environ.get(v, "root") != "root" for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
    os.environ["METAFLOW_USER"] = "movierec"

from metaflow import Config, FlowSpec, card, current, project, step  # noqa: E402
from metaflow.plugins.package_suffixes_mutator import package_suffixes  # noqa: E402

from movierec import pipeline  # noqa: E402
from movierec.reports import cards  # noqa: E402
from movierec.training import flowconfig  # noqa: E402


@project(name="movierec")  # deployments per branch: argo-workflows create --branch / --production
@package_suffixes(flowconfig.PACKAGE_SUFFIXES)  # the code package carries what publish builds the wheel from
@flowconfig.configured
class RecommenderFlow(FlowSpec):
    """Load → split → (train retrieval + sources ∥ tune rating model) → build Annoy index → train ranker →
    evaluate → publish."""

    config = Config("config", default_value=flowconfig.defaults(), parser="movierec.training.flowconfig.parse",
                    help="settings file (JSON or YAML, see flows/configs/); each setting's option overrides its value")

    # Every card is "blank": the components each step adds are the report. The default card type also
    # rendered every artifact the task holds (the sources, the bundle), 2-4 s of each step's end.

    @card(type="blank")
    @step
    def start(self):
        """Load the ratings and movies (ML-100K by default) and record the run's settings."""
        self.settings = flowconfig.settings_of(self)
        self.started_us = time.time_ns() // 1000  # the published wheel's version (pipeline.version_time)
        dataset = pipeline.load_data(self.settings)
        self.dataset, self.data_stats = dataset.to_bytes(), dataset.stats()
        print(f"[start] {dataset.name}: {self.data_stats}")
        origin = self.settings.data.dir or self.settings.data.source or dataset.name
        current.card.extend(cards.data_card(dataset, origin))
        current.card.extend(cards.settings_card(flowconfig.sources(self.settings, self.config)))
        self.next(self.split)

    @card(type="blank")
    @step
    def split(self):
        """Encode the ratings and split them into train and test as the protocol says."""
        self.data_split = pipeline.split_data(self.dataset, self.settings)
        print(f"[split] {self.data_split.split.summary()}")
        current.card.extend(cards.split_card(self.data_split, self.settings.protocol))
        self.next(self.train_retrieval, self.tune_ranking)

    @card(type="blank")
    @step
    def train_retrieval(self):
        """Train the retrieval model (with Ray Train where that spreads it) and fit the candidate sources the
        settings switch on."""
        self.retrieval = pipeline.train_retrieval(self.data_split, self.settings, pipeline.ray_storage(self),
                                                  beside_tuning=True)
        self.sources = pipeline.fit_sources(self.data_split, self.settings)
        current.card.extend(cards.retrieval_card(self.retrieval, self.sources))
        self.next(self.build_index)

    @card(type="blank")
    @step
    def tune_ranking(self):
        """Search the rating model's hyper-parameters (with Ray Tune where that pays; none for implicit-only data)."""
        self.ranking = pipeline.tune_ranking(self.data_split, self.settings, pipeline.ray_storage(self),
                                             beside_retrieval=True)
        current.card.extend(cards.ranking_card(self.ranking))
        self.next(self.build_index)

    @card(type="blank")
    @step
    def build_index(self, inputs):
        """Join both branches and build the Annoy index over the movies' vectors."""
        self.merge_artifacts(inputs)
        self.retrieval_index = pipeline.build_index(self.retrieval, self.settings)
        current.card.extend(cards.index_card(self.retrieval_index))
        self.next(self.train_ranker)

    @card(type="blank")
    @step
    def train_ranker(self):
        """Fit the second stage's learned ranker over the sources' candidates."""
        self.ranker = pipeline.train_ranker(self.data_split, self._stages(), self.settings)
        current.card.extend(cards.ranker_card(self.ranker))
        self.next(self.evaluate)

    @card(type="blank")
    @step
    def evaluate(self):
        """Score both stages and the baselines on the test split."""
        report = pipeline.evaluate(self.data_split, self._stages())
        self.metrics, self.samples = report.rows, report.samples
        print(report.to_text())
        current.card.extend(cards.evaluation_card(report, self.settings.protocol))
        self.next(self.publish)

    @card(type="blank")
    @step
    def publish(self):
        """Bundle the models, build the wheel and upload it to the package repository; promote it
        over the champion unless it is worse there (the promotion gate)."""
        # a resumed run has start's time cloned from the run it resumed: it gets a version of its own,
        # the same in every retry of this step
        started_us = pipeline.publish_time(getattr(self, "started_us", None))
        run = {"flow": current.flow_name, "run_id": current.run_id, "started_us": started_us,
               "dataset": self.data_stats, "metrics": self.metrics}
        self.bundle, publication = pipeline.publish(self.data_split, self._stages(), self.settings, run)
        self.publication = publication.to_dict()  # the wheel: in publication["repository"], by name and sha256
        # the gate: beside the champion on this test split (end tags the run by its decision)
        self.promotion = pipeline.promote(self.data_split, self.bundle, self.settings, self.data_stats.get("name"))
        current.card.extend(cards.publish_card(self.publication, len(self.bundle), self.promotion))
        self.next(self.end)

    @card(type="blank")
    @step
    def end(self):
        """Tag the run by what it published and the promotion gate's decision; print the headline
        metrics and how to install and use the published model."""
        self.run_tags = pipeline.record_promotion(self.publication["version"], self.promotion)
        lines = cards.finished_lines(current.run_id, self.publication, self.metrics, sys.argv[0])
        print("[end] " + "\n  ".join(lines))
        current.card.extend(cards.finished_card(lines))

    def _stages(self):
        """Both stages' trained parts as one value (the ranker once it is trained)."""
        return pipeline.stages(self.retrieval, self.retrieval_index, self.sources, self.ranking,
                               getattr(self, "ranker", None))


if __name__ == "__main__":
    RecommenderFlow()
