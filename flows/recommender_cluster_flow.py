"""RecommenderClusterFlow: RecommenderFlow with the retrieval model trained on a Ray cluster that
Metaflow forms for one step (``@metaflow_ray``, the metaflow-ray extension), one container per node.

    python flows/recommender_cluster_flow.py --with kubernetes run              # ray.nodes pods
    python flows/recommender_cluster_flow.py --with kubernetes argo-workflows create
    python flows/recommender_cluster_flow.py --datastore s3 run --ray-nodes 2   # 2 nodes on this machine

The graph is RecommenderFlow's, with its retrieval branch in three steps: ``train_retrieval``
fits the candidate sources and fans out to ``ray.nodes`` tasks of ``train_on_cluster``
(``num_parallel``), which start one Ray node each; the first (the control task) trains the model
over all of them with Ray Train, its results kept in the run's S3 datastore, which every node
reaches; ``gather_retrieval`` takes the control task's model. A gang of tasks needs a scheduler
that starts them together: Kubernetes (JobSets, also under Argo Workflows), AWS Batch
(multi-node jobs) or a local run; Step Functions cannot run such a step, so deploy
RecommenderFlow there. ``@metaflow_ray`` keeps its state in the datastore: use the S3 one.
"""

from metaflow import Config, card, current, metaflow_ray, step

from movierec import pipeline
from movierec.reports import cards
from movierec.training import flowconfig
from recommender_flow import RecommenderFlow


class RecommenderClusterFlow(RecommenderFlow):
    """RecommenderFlow, its retrieval model trained across ``ray.nodes`` Ray nodes."""

    config = Config("config", default_value=flowconfig.defaults(), parser="movierec.training.flowconfig.parse_cluster",
                    help="settings file (JSON or YAML, see flows/configs/); each setting's option overrides its value")

    @card(type="blank")
    @step
    def train_retrieval(self):
        """Fit the candidate sources the settings switch on and fan out to one task per Ray node."""
        self.sources = pipeline.fit_sources(self.data_split, self.settings)
        self.next(self.train_on_cluster, num_parallel=self.settings.ray.nodes)

    @card(type="blank")
    @metaflow_ray(all_nodes_started_timeout=600)
    @step
    def train_on_cluster(self):
        """Hold a Ray node; the control task trains the retrieval model across all of them."""
        # only the control task runs this; the other tasks hold a Ray node until it finishes
        self.retrieval = pipeline.train_retrieval_on_cluster(self.data_split, self.settings, pipeline.ray_storage(self),
                                                              current.parallel.main_ip)
        current.card.extend(cards.retrieval_card(self.retrieval, self.sources))
        self.next(self.gather_retrieval)

    @card(type="blank")
    @step
    def gather_retrieval(self, inputs):
        """Take the retrieval model the control task trained."""
        # The control task trained the model; the others only held Ray nodes. All hand on the
        # inherited artifacts as stored (step_frame does not save again what a step only read), so
        # merging every input would not conflict today; taking the control task's alone stays right
        # should training ever change an input in place, and says whose results these are.
        self.merge_artifacts([next(i for i in inputs if hasattr(i, "retrieval"))])
        self.next(self.build_index)


if __name__ == "__main__":
    RecommenderClusterFlow()
