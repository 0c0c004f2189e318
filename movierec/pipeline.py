"""What each flow step does, as plain functions of the run's :class:`~movierec.core.settings.Settings`:
the one layer the flow calls (it wires these together and draws the cards).

Keeping the logic here means it is importable, testable without Metaflow, and reusable from
benchmarks and notebooks. Values that travel together travel as one: a :class:`DataSplit`
(encoded ratings + split), a :class:`~movierec.models.index.RetrievalIndex` (vectors + Annoy index).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from metaflow.exception import MetaflowException

from movierec.core import metrics
from movierec.core.arrays import Interactions
from movierec.core.protocols import get_protocol
from movierec.core.settings import Settings, key_ids
from movierec.errors import DataError
from movierec.training.cluster import CLUSTER_HEAD_PORT, ray_session, session_dir, stop_session_processes, storage_path
from movierec.training.flowconfig import runs_remotely

# The model modules import torch (1.5 s): steps that only load, split or report skip it. The data
# package imports pyarrow (0.3 s): every step's card is drawn by a process of its own that imports
# the flow, and so this module, and draws from artifacts (2 per step, 18 per run).
if TYPE_CHECKING:
    from metaflow import FlowSpec

    from movierec.data import Dataset
    from movierec.data.features import Encoded
    from movierec.data.split import DataSplit, Split
    from movierec.models.index import RetrievalIndex
    from movierec.models.second_stage import Ranker
    from movierec.models.sources import SourceModels
    from movierec.training.evaluation import Report
    from movierec.training.packaging import Publication
    from movierec.training.rating_search import RankingResult
    from movierec.training.retrieval import RetrievalResult
    from movierec.training.stages import TwoStage

__all__ = ["InputError", "build_index", "evaluate", "fit_sources", "load_data", "promote", "publish", "publish_time",
           "ray_storage", "record_promotion", "run_created_us", "split_data", "split_for", "stages", "train_ranker",
           "train_retrieval", "train_retrieval_on_cluster", "tune_ranking", "version_time"]


class InputError(MetaflowException, DataError):
    """Input the ``start`` step cannot use (data, its settings, the feedback store), said in one
    line: Metaflow prints a MetaflowException as its headline and message, where any other
    exception is an "Internal error" and a 40-line traceback above the one useful line. Still a
    DataError (a ValueError) for callers outside a flow."""

    headline = "Bad input data"


def load_data(settings: Settings) -> Dataset:
    """``settings.data``: a user's folder (local, or ``s3://``) or interactions file, a PostgreSQL
    database, a synthetic ML-20M-shaped set, or by default ML-100K (fetched on demand); what
    loading dropped or worked around is printed. Bad input is an :class:`InputError`."""
    try:
        return _load(settings)
    except ValueError as exc:  # DataError, the settings' checks, the store's (and pyarrow's ArrowInvalid)
        raise InputError(str(exc)) from exc


def _load(settings: Settings) -> Dataset:
    from movierec import data
    from movierec.data import synthetic

    source = settings.data
    if sum(map(bool, (source.dir, source.synthetic_ratings, source.source))) > 1:
        raise ValueError("choose one of --data-dir, --data-source and --synthetic-ratings")
    interactions = Path(source.dir).suffix.lower() in data.INTERACTION_SUFFIXES
    if source.items_file and not interactions:
        raise ValueError("--items-file goes with an interactions file (--data-dir ratings.parquet or .csv)")
    if not source.columns.rating and not interactions:
        raise ValueError('--rating-column "" (implicit-only data) goes with an interactions file (--data-dir '
                         "views.parquet or .csv); MovieLens layouts and database queries carry ratings")
    if interactions and not source.columns.timestamp and settings.protocol == "temporal":
        raise ValueError("the temporal protocol splits by time: give --timestamp-column, or choose --protocol "
                         "tfrs or msr")
    if source.synthetic_ratings:
        dataset = synthetic.ml20m_like(source.synthetic_ratings, seed=settings.seed)
    elif source.source:
        dataset = data.load_postgres(source.source, source.ratings_query, source.movies_query, source.users_query)
    elif source.dir.startswith("s3://"):
        dataset = data.load_remote_dataset(source.dir)
    elif interactions:
        dataset = data.load_interactions(Path(source.dir).expanduser(), source.columns, source.items_file)
    else:
        dataset = data.load_dataset(Path(source.dir).expanduser() if source.dir else data.fetch_ml100k())
    if source.feedback_store:
        from movierec.serving.store import InteractionStore

        store = source.feedback_store
        if not store.startswith(("postgresql://", "postgres://")) and not Path(store).expanduser().is_file():
            raise DataError(f"{store}: no such ratings store (movierec serve --store writes one)")
        kept = InteractionStore(store)
        dataset = data.with_feedback(dataset, kept.table(), kept.label, key_ids(source.feedback_leave_out))
    elif source.feedback_leave_out:
        raise ValueError("--feedback-leave-out names keys of a --feedback-store: give the store too")
    for note in dataset.warnings:
        print(f"[start] warning: {note}", flush=True)
    return dataset.head(source.max_ratings)


def split_for(enc: Encoded, protocol: str, seed: int, n_base: int | None = None) -> Split:
    """The train/test split a named evaluation protocol prescribes, drawn over the first
    ``n_base`` ratings (default: all); the ratings after them are feedback, which joins the
    training part only (``split.join_training``)."""
    from movierec.data.split import join_training, split_ratings

    p = get_protocol(protocol)
    n_base = len(enc.user_idx) if n_base is None else n_base
    base = split_ratings(enc.user_idx[:n_base], enc.item_idx[:n_base], enc.timestamp[:n_base], p.split_method,
                         p.test_fraction, seed=seed)
    return join_training(base, enc.user_idx, enc.item_idx, enc.timestamp, n_base)


def split_data(dataset: dict[str, bytes], settings: Settings) -> DataSplit:
    """The loaded data (``Dataset.to_bytes``) encoded with its feedback, and split as
    ``settings.protocol`` says: the split is the data's own, the feedback is added to its
    training part (``split.join_training``)."""
    from movierec.data import Dataset
    from movierec.data.features import encode
    from movierec.data.split import DataSplit

    loaded = Dataset.from_bytes(dataset)
    enc = encode(replace(loaded, ratings=loaded.with_feedback_rows()))
    return DataSplit(enc, split_for(enc, settings.protocol, settings.seed, loaded.ratings.num_rows))


def ray_storage(flow: FlowSpec) -> str:
    """Where the running step of ``flow`` keeps its Ray results (``cluster.storage_path``): in the
    run's own datastore, the one ``--datastore``/``--datastore-root`` chose, not only the configured
    default. Metaflow offers no public accessor for it; the running flow holds it as
    ``_datastore``."""
    from metaflow import current

    store = flow._datastore
    return storage_path(current.flow_name, current.run_id, current.step_name, current.retry_count,
                        datastore=store.TYPE, root=store._storage_impl.datastore_root)


def train_retrieval(data_split: DataSplit, settings: Settings, storage: str, beside_tuning: bool = False
                    ) -> RetrievalResult:
    """The retrieval model, trained on the training ratings with Ray Train, or in this process
    where Ray Train would spread nothing (``RaySettings.uses_ray_train``: no Ray then), with the
    settings a Ray Tune search chose where ``retrieval_search.trials`` asks for one;
    ``beside_tuning``: the flow runs ``tune_ranking`` at the same time, which shares this machine
    in a local run (see ``RaySettings.beside_tuning``), unless the data is implicit-only (it then
    searches nothing); on Kubernetes or AWS Batch each step has a container of its own with
    ``ray.num_cpus`` CPUs, and training is told all of them."""
    from movierec.training.retrieval_search import train_searched

    if beside_tuning and not runs_remotely() and not data_split.enc.implicit:
        settings = replace(settings, ray=settings.ray.beside_tuning())
    ray = settings.ray
    return train_searched(data_split.enc, data_split.split.train, settings, storage,
                          session=lambda needed: ray_session(ray) if needed else contextlib.nullcontext())


def train_retrieval_on_cluster(data_split: DataSplit, settings: Settings, storage: str, head_ip: str
                               ) -> RetrievalResult:
    """:func:`train_retrieval` on the Ray cluster ``@metaflow_ray`` formed for the step, its head
    at ``head_ip`` (``current.parallel.main_ip``; called in the control task): the retrieval
    workers share all of the cluster's CPUs, whatever each node's container was given.
    ``storage`` must be reachable from every node (the S3 datastore: ``ray_storage``). The
    workers are spread over the nodes, ``ceil(workers / nodes)`` to a node, each with its share
    of a node's ``ray.num_cpus`` (what ``@resources`` gave the container: Ray itself counts the
    host's cores, a pod's request is no limit). The cluster's processes on this machine are
    stopped afterwards (``cluster.stop_session_processes``), also when training fails."""
    import ray

    from movierec.training.retrieval_search import train_searched

    # The head's address, not "auto": that reads the last cluster started on this machine, which
    # in a local run may be tune_ranking's own instance, started beside this step.
    joined = replace(settings.ray, address=f"{head_ip}:{CLUSTER_HEAD_PORT}")
    with ray_session(joined):
        session = session_dir()
        try:
            workers, nodes = settings.retrieval.workers, settings.ray.nodes
            per_worker = max(1, settings.ray.num_cpus // -(-workers // nodes))
            cluster = replace(settings, ray=replace(joined, num_cpus=per_worker * workers))  # train divides it
            return train_searched(data_split.enc, data_split.split.train, cluster, storage, spread=True)
        finally:
            ray.shutdown()
            stop_session_processes(session)


def fit_sources(data_split: DataSplit, settings: Settings) -> SourceModels:
    """The candidate sources ``settings.sources`` switches on (``movierec.models.sources``), each chosen on the
    retrieval model's validation pairs."""
    from movierec.models.sources import fit_sources as fit
    from movierec.training.retrieval import validation_split

    fit_idx, val_idx = validation_split(data_split.split.train, settings)
    fit_pairs, val_pairs = (Interactions.of(data_split.enc, rows, stars=False) for rows in (fit_idx, val_idx))
    return fit(fit_pairs, val_pairs, settings.sources, seed=settings.seed)


def tune_ranking(data_split: DataSplit, settings: Settings, storage: str, beside_retrieval: bool = False
                 ) -> RankingResult | None:
    """The rating model, searched on the training ratings with Ray Tune, or in this process where
    Ray would cost more than it spreads (``rating_search.uses_ray_tune``: no Ray then); None for
    implicit-only data, which has no ratings to learn (the ranker then goes without the rating
    feature). ``beside_retrieval``: the flow runs ``train_retrieval`` at the same time, and a search
    in this process takes the CPUs it leaves in a local run (see ``RaySettings.beside_retrieval``),
    numpy's BLAS included."""
    if data_split.enc.implicit:
        print("[tune_ranking] implicit-only data (no ratings): no rating model to search; the ranker orders "
              "candidates without predicted stars", flush=True)
        return None
    from movierec.training.rating_search import tune_ranking as search
    from movierec.training.rating_search import uses_ray_tune

    train = data_split.split.train
    if uses_ray_tune(settings, len(train)):
        with ray_session(settings.ray):
            return search(data_split.enc, train, settings, storage)
    from threadpoolctl import threadpool_limits

    if beside_retrieval and not runs_remotely():
        settings = replace(settings, ray=settings.ray.beside_retrieval())
    with threadpool_limits(settings.ray.num_cpus, "blas"):
        return search(data_split.enc, train, settings, storage)


def build_index(retrieval: RetrievalResult, settings: Settings) -> RetrievalIndex:
    """Every user's and movie's vector, and the Annoy index over the movies', measured."""
    from movierec.models.index import build_index as build

    user_vecs, item_vecs = retrieval.embeddings()
    return build(user_vecs, item_vecs, settings.index, settings.seed)


def stages(retrieval: RetrievalResult, index: RetrievalIndex, sources: SourceModels, ranking: RankingResult | None,
           ranker: Ranker | None = None) -> TwoStage:
    """The trained parts of both stages as one value (``movierec.training.stages``)."""
    from movierec.training.stages import TwoStage

    return TwoStage(retrieval, index, sources, ranking, ranker)


def train_ranker(data_split: DataSplit, stages: TwoStage, settings: Settings) -> Ranker:
    """The second stage's weights, searched on the retrieval model's validation pairs, over
    candidates from the sources as they were before seeing those pairs."""
    from movierec.models.second_stage import candidates, concat, search
    from movierec.models.sources import interactions
    from movierec.training.retrieval import validation_split

    fit_idx, val_idx = validation_split(data_split.split.train, settings)
    fit, val = (Interactions.of(data_split.enc, rows, stars=False) for rows in (fit_idx, val_idx))
    users = np.unique(val.users)
    seen = fit.csr()
    history = interactions(fit)
    rate = stages.rater()
    popularity = np.bincount(fit.items, minlength=fit.n_items)
    parts = []
    for part in np.array_split(users, max(1, -(-len(users) // 1024))):  # [users, movies] scores a chunk at a time
        parts.append(candidates(part, stages.scores(part, history[part], stages.sources.tuning), seen,
                                ratings=rate, popularity=popularity, n=settings.ranker.candidates))
    cands = concat(parts)
    keys = metrics.relevant_keys(val.users, val.items, val.n_items)
    return search(cands, users, keys, val.n_items, per_source=settings.ranker.candidates, seed=settings.seed)


def evaluate(data_split: DataSplit, stages: TwoStage) -> Report:
    """Every metric of the two-stage pipeline, each stage alone and the baselines on the test split."""
    from movierec.training.evaluation import Evaluator

    return Evaluator(data_split.enc, data_split.split).run(stages)


def version_time(started_us: int | None, origin_run_id: str | None, created_us: int | None) -> int:
    """The microsecond a run's wheel version is made of (``packaging.run_version``): when its
    ``start`` ran (``started_us``), or, in a resumed run (``origin_run_id``), when the resumed run
    was created (``created_us``, :func:`run_created_us`). ``resume`` clones ``start`` with its
    artifacts, so the origin's time named the origin's version: a resumed run that re-ran training
    found that version already published (by the origin) and reported the origin's wheel, never
    uploading its own model. The creation time, not the publish attempt's clock, because a retried
    ``publish`` must find the version its first attempt may have uploaded, not make a second one."""
    if origin_run_id is None and started_us is not None:
        return started_us
    if created_us is None:
        raise ValueError(f"version_time: the resumed run (of {origin_run_id}) needs its creation time (created_us)")
    return created_us


def run_created_us(flow_name: str, run_id: str) -> int:
    """When run ``flow_name/run_id`` was created, in microseconds since the epoch: the same in every
    step and every retry of the run. With local metadata that is the run id itself (Metaflow's
    local run ids are the creation time in microseconds), not the run's ``created_at``: the local
    provider rewrites that to the time of any tag change, and ``publish`` tags its run (the
    promotion gate), so a retried ``publish`` would have named a second version. With the metadata
    service, ``created_at`` (a naive local datetime made from the recorded epoch milliseconds;
    ``timestamp()`` undoes that exactly, and the rounding drops float noise below a millisecond)."""
    from metaflow import Run, get_metadata

    if get_metadata().startswith("local") and run_id.isdigit():
        return int(run_id)
    return round(Run(f"{flow_name}/{run_id}").created_at.timestamp() * 1000) * 1000


def publish_time(started_us: int | None) -> int:
    """:func:`version_time` of the running run (``metaflow.current``), its start time
    ``started_us`` as the ``start`` step stored it; the metadata is only asked in a resumed run."""
    from metaflow import current

    origin = current.origin_run_id
    created = None if origin is None else run_created_us(current.flow_name, current.run_id)
    return version_time(started_us, origin, created)


def publish(data_split: DataSplit, stages: TwoStage, settings: Settings, metadata: dict) -> tuple[bytes, Publication]:
    """(bundle, publication): the models zipped into a bundle (``movierec.serving.bundle``) with the run's
    ``metadata`` (its ``run_id`` and ``started_us`` make the wheel's version), packaged into a wheel
    and uploaded (``movierec.training.packaging``). The wheel itself is not returned: it is the bundle
    again (21 MB on ML-100K) with the code, and lies in the repository, where the publication
    (its name, sha256 and install command) finds it."""
    from movierec.training.bundling import make_bundle
    from movierec.training.packaging import publish as upload

    bundle = make_bundle(data_split, stages, metadata, user_data=settings.publish.user_data)
    publication = upload(bundle, settings.publish)
    return bundle, publication


def promote(data_split: DataSplit, bundle: bytes, settings: Settings, dataset: str) -> dict:
    """The promotion gate for the running run's published ``bundle`` (``movierec.training.promotion``):
    scored beside the champion (the latest promotion of this project branch and ``dataset``) on this
    run's test split; what was found and decided, as the card and the run keep it. The ``end`` step
    tags the run by it (:func:`record_promotion`)."""
    from metaflow import current

    from movierec.training import promotion

    branch = getattr(current, "branch_name", None)
    champion = promotion.champion_run(current.flow_name, current.run_id, settings.promotion, branch=branch,
                                      dataset=dataset)
    print(f"[publish] promotion gate: against {champion or 'no champion yet'}", flush=True)
    result = promotion.gate(data_split, bundle, champion, settings.promotion)
    verdict = "promoted" if result.decision.promote else "not promoted"
    print(f"[publish] {verdict}: " + "; ".join(result.decision.reasons), flush=True)
    return result.to_dict()


def record_promotion(version: str, promotion: dict) -> list[str]:
    """Tag the running run ``published:<version>`` and, as the gate decided, ``promoted``: in
    ``end``, once ``publish`` has stored its bundle, so that no run a later gate would load as its
    champion lacks one."""
    from metaflow import current

    from movierec.training.promotion import record

    return record(f"{current.flow_name}/{current.run_id}", version, promotion)
