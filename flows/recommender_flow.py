"""RecommenderFlow: a two-stage movie recommender, trained, evaluated and versioned end to end.

    python flows/recommender_flow.py run                       # ML-100K, default budgets
    python flows/recommender_flow.py --config config flows/configs/lightgcn.json run --tune-samples 2
    python flows/recommender_flow.py run --data-dir ~/ml-25m   # a GroupLens download
    python flows/recommender_flow.py resume                    # continue a failed run
    python flows/recommender_flow.py card view evaluate        # the metrics report

Each step is a few calls into the ``movierec`` package plus its card.
"""

import os
from pathlib import Path

# Metaflow takes the user from the environment and refuses "root"; shells without a usable name
# (CI, containers) would stop with "Unknown user", so they run as "movierec".
if not any(os.environ.get(v, "root") != "root" for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
    os.environ["METAFLOW_USER"] = "movierec"

from metaflow import Config, FlowSpec, Parameter, card, current, step  # noqa: E402

from movierec import faults, flowconfig, index, pipeline, reports  # noqa: E402
from movierec.config import RetrievalConfig  # noqa: E402
from movierec.data import Dataset  # noqa: E402
from movierec.features import encode  # noqa: E402
from movierec.packaging import DEFAULT_INDEX_DIR, publish  # noqa: E402
from movierec.publish import make_bundle  # noqa: E402


class RecommenderFlow(FlowSpec):
    """Load → split → (train retrieval ∥ tune ranking) → build Annoy index → evaluate → publish."""

    config = Config("config", default=str(flowconfig.DEFAULT_FILE), parser="movierec.flowconfig.parse",
                    help="settings file (JSON or YAML, see flows/configs/); each setting below overrides its value")
    data_dir = flowconfig.parameter("data.dir")
    synthetic_ratings = flowconfig.parameter("data.synthetic_ratings")
    max_ratings = flowconfig.parameter("data.max_ratings")
    protocol = flowconfig.parameter("protocol")
    seed = flowconfig.parameter("seed")
    retrieval_model = flowconfig.parameter("retrieval.model")
    retrieval_epochs = flowconfig.parameter("retrieval.epochs")
    embedding_dim = flowconfig.parameter("retrieval.dim")
    retrieval_workers = flowconfig.parameter("retrieval.workers")
    history = flowconfig.parameter("retrieval.history")
    tune_samples = flowconfig.parameter("tune.samples")
    tune_epochs = flowconfig.parameter("tune.epochs")
    tune_trial_ratings = flowconfig.parameter("tune.trial_ratings")
    train_budget = flowconfig.parameter("train_budget")
    n_trees = flowconfig.parameter("index.n_trees")
    ray_address = flowconfig.parameter("ray.address")
    num_cpus = flowconfig.parameter("ray.num_cpus")
    publish_user_data = flowconfig.parameter("publish.user_data")
    repository_url = flowconfig.repository_url_parameter()
    index_dir = Parameter("index-dir", default=str(DEFAULT_INDEX_DIR),
                          help="local package index folder (a PEP 503 index: packages/ and simple/)")

    @card
    @step
    def start(self):
        faults.maybe_fail("start")
        self.settings = flowconfig.effective(self)
        flowconfig.check(self.settings)
        dataset = pipeline.load_data(self.data_dir, self.synthetic_ratings, self.max_ratings, self.seed)
        self.dataset = dataset.to_bytes()
        self.data_stats = dataset.stats()
        print(f"[start] {dataset.name}: {self.data_stats}")
        current.card.extend(reports.data_card(dataset, self.data_dir or dataset.name))
        current.card.extend(reports.settings_card(flowconfig.sources(self.settings, self.config)))
        self.next(self.split)

    @card
    @step
    def split(self):
        faults.maybe_fail("split")
        self.encoded = encode(Dataset.from_bytes(self.dataset))
        enc = self.encoded
        self.split_data = pipeline.split_for(enc, self.protocol, self.seed)
        print(f"[split] {self.split_data.summary()}")
        current.card.extend(reports.split_card(enc, self.split_data, self.protocol))
        self.next(self.train_retrieval, self.tune_ranking)

    @card
    @step
    def train_retrieval(self):
        faults.maybe_fail("train_retrieval")
        cfg = RetrievalConfig(model=self.retrieval_model, dim=self.embedding_dim, epochs=self.retrieval_epochs,
                              workers=self.retrieval_workers, seed=self.seed, max_examples=self.train_budget,
                              history=self.history)
        self.retrieval = pipeline.run_retrieval(self.encoded, self.split_data, cfg, self._ray_storage(),
                                                self.ray_address, self.num_cpus)
        current.card.extend(reports.retrieval_card(self.retrieval))
        self.next(self.build_index)

    @card
    @step
    def tune_ranking(self):
        faults.maybe_fail("tune_ranking")
        self.ranking = pipeline.run_tuning(self.encoded, self.split_data, self._ray_storage(), self.tune_samples,
                                           self.tune_epochs, self.seed, self.ray_address, self.num_cpus,
                                           self.tune_trial_ratings, self.train_budget, self.history)
        current.card.extend(reports.ranking_card(self.ranking))
        self.next(self.build_index)

    @card
    @step
    def build_index(self, inputs):
        self.merge_artifacts(inputs)
        faults.maybe_fail("build_index")
        self.user_vectors, self.item_vectors = self.retrieval.embeddings()
        self.index_settings = index.IndexSettings(n_trees=self.n_trees)
        self.index_blob = index.build(self.item_vectors, self.index_settings, self.seed)
        self.index_quality = pipeline.measure_index(self.index_blob, self.index_settings,
                                                    self.user_vectors, self.item_vectors)
        current.card.extend(reports.index_card(self.index_settings, self.index_quality))
        self.next(self.evaluate)

    @card
    @step
    def evaluate(self):
        faults.maybe_fail("evaluate")
        report = pipeline.evaluate(self.encoded, self.split_data, self.retrieval, self.ranking,
                                   self.user_vectors, self.item_vectors, self.index_blob, self.index_settings)
        self.metrics, self.samples = report.rows, report.samples
        print(report.to_text())
        current.card.extend(reports.evaluation_card(report, self.protocol))
        self.next(self.publish)

    @card
    @step
    def publish(self):
        faults.maybe_fail("publish")
        self.bundle = make_bundle(self.encoded, self.split_data.train, self.retrieval, self.ranking,
                                  self.user_vectors, self.item_vectors, self.index_blob, self.index_settings,
                                  {"flow": current.flow_name, "run_id": current.run_id,
                                   "dataset": self.data_stats, "metrics": self.metrics},
                                  user_data=self.publish_user_data)
        publication, self.wheel = publish(self.bundle, current.run_id, self.repository_url, Path(self.index_dir))
        self.publication = publication.to_dict()
        current.card.extend(reports.publish_card(self.publication, len(self.bundle)))
        self.next(self.end)

    @card
    @step
    def end(self):
        print(f"[end] run {current.run_id} finished.\n"
              f"  report:  python flows/recommender_flow.py card view evaluate --run-id {current.run_id}\n"
              f"  install: {self.publication['install_command']}\n"
              f"  then:    movierec recommend --user 1")

    def _ray_storage(self) -> str:
        from movierec.cluster import storage_path

        return storage_path(current.flow_name, current.run_id, current.step_name)


if __name__ == "__main__":
    RecommenderFlow()
