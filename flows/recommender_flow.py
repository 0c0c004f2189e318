"""RecommenderFlow: a two-stage movie recommender, trained, evaluated and versioned end to end.

    python flows/recommender_flow.py run                       # ML-100K, default budgets
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

from metaflow import FlowSpec, Parameter, card, current, step  # noqa: E402

from movierec import faults, index, pipeline, reports  # noqa: E402
from movierec.config import RetrievalConfig  # noqa: E402
from movierec.data import Dataset  # noqa: E402
from movierec.features import encode  # noqa: E402
from movierec.packaging import DEFAULT_INDEX_DIR, publish  # noqa: E402
from movierec.publish import make_bundle  # noqa: E402


class RecommenderFlow(FlowSpec):
    """Load → split → (train retrieval ∥ tune ranking) → build Annoy index → evaluate → publish."""

    data_dir = Parameter("data-dir", default="",
                         help="MovieLens folder (ratings.csv+movies.csv, ml-1m .dat, or recbole ml-100k files); "
                              "default: ML-100K, downloaded once into data/ml-100k")
    synthetic_ratings = Parameter("synthetic-ratings", default=0, help="use N synthetic ML-20M-shaped ratings")
    max_ratings = Parameter("max-ratings", default=0, help="keep only the first N ratings by time (0: all)")
    protocol = Parameter("protocol", default="tfrs",
                         help="evaluation protocol: tfrs (80/20 random), msr (per-user 75/25), temporal (time cutoff)")
    seed = Parameter("seed", default=42, help="seed for the split, initialisation and data order")
    retrieval_model = Parameter("retrieval-model", default="two_tower",
                                help="retrieval model: two_tower (id + feature towers) or lightgcn (graph "
                                     "propagation over the user-movie interactions)")
    retrieval_workers = Parameter("retrieval-workers", default=2, help="Ray Train workers (DDP over gloo)")
    retrieval_epochs = Parameter("retrieval-epochs", default=RetrievalConfig.epochs,
                                 help="most retrieval epochs (stops early when validation quality stalls)")
    embedding_dim = Parameter("embedding-dim", default=64, help="retrieval embedding size")
    history = Parameter("history", default=False, type=bool,
                        help="both models also see each user's 50 latest rated movies (SVD++-style): "
                             "about +0.002 NDCG@10 on ML-100K for half the training speed")
    tune_samples = Parameter("tune-samples", default=6, help="Ray Tune trials for the rating model")
    tune_epochs = Parameter("tune-epochs", default=8, help="most epochs a Tune trial may train (ASHA stops early)")
    train_budget = Parameter("train-budget", default=RetrievalConfig.max_examples,
                             help="most training examples each model sees over all its epochs (epochs are cut to fit): "
                                  "keeps ML-20M-sized data inside ~20 minutes on 2 cores; ML-100K is far below it")
    tune_trial_ratings = Parameter("tune-trial-ratings", default=1_000_000,
                                   help="Tune trials train on a sample of at most this many ratings; on larger data "
                                        "the best settings are then refitted once on all of them")
    n_trees = Parameter("n-trees", default=50, help="Annoy trees (more: better recall, bigger index)")
    ray_address = Parameter("ray-address", default="", help="join this Ray cluster instead of starting one")
    num_cpus = Parameter("num-cpus", default=2, help="CPUs for the local Ray instance")
    repository_url = Parameter("repository-url", default="",
                               help="package index to upload the wheel to with twine (credentials: TWINE_USERNAME/"
                                    "TWINE_PASSWORD); default: the local PEP 503 index in --index-dir")
    index_dir = Parameter("index-dir", default=str(DEFAULT_INDEX_DIR),
                          help="local package index folder "
                               "(pip install --extra-index-url file://<dir>/simple movierec)")

    @card
    @step
    def start(self):
        faults.maybe_fail("start")
        pipeline.check_parameters(self.protocol, self.retrieval_workers, self.retrieval_epochs, self.tune_samples,
                                  self.tune_epochs, self.n_trees, self.num_cpus, self.train_budget,
                                  self.tune_trial_ratings, self.retrieval_model)
        dataset = pipeline.load_data(self.data_dir, self.synthetic_ratings, self.max_ratings, self.seed)
        self.dataset = dataset.to_bytes()
        self.data_stats = dataset.stats()
        print(f"[start] {dataset.name}: {self.data_stats}")
        current.card.extend(reports.data_card(dataset, self.data_dir or dataset.name))
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
                                   "dataset": self.data_stats, "metrics": self.metrics})
        publication, wheel = publish(self.bundle, current.run_id, self.repository_url, Path(self.index_dir))
        self.publication, self.wheel = publication.to_dict(), wheel.read_bytes()
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
