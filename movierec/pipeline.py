"""What each flow step does, as plain functions of the run's :class:`~movierec.settings.Settings`:
the one layer the flow calls (it wires these together and draws the cards).

Keeping the logic here means it is importable, testable without Metaflow, and reusable from
benchmarks and notebooks. Values that travel together travel as one: a :class:`DataSplit`
(encoded ratings + split), a :class:`~movierec.index.RetrievalIndex` (vectors + Annoy index).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from movierec import data, synthetic
from movierec.cluster import ray_session, storage_path
from movierec.features import Encoded, encode
from movierec.protocols import get_protocol
from movierec.settings import Settings
from movierec.split import DataSplit, Split, split_ratings

# The model modules import torch (1.5 s): steps that only load, split or report skip it.
if TYPE_CHECKING:
    from movierec.evaluation import Report
    from movierec.index import RetrievalIndex
    from movierec.packaging import Publication
    from movierec.ranking import RankingResult
    from movierec.retrieval import RetrievalResult

__all__ = ["DataSplit", "build_index", "evaluate", "load_data", "publish", "ray_storage", "split_data", "split_for",
           "train_retrieval", "tune_ranking"]


def load_data(settings: Settings) -> data.Dataset:
    """``settings.data``: a user's folder, a synthetic ML-20M-shaped set, or by default ML-100K
    (fetched on demand); what loading dropped or worked around is printed."""
    source = settings.data
    if source.dir and source.synthetic_ratings:
        raise ValueError("choose either --data-dir or --synthetic-ratings, not both")
    if source.synthetic_ratings:
        dataset = synthetic.ml20m_like(source.synthetic_ratings, seed=settings.seed)
    else:
        dataset = data.load_dataset(Path(source.dir).expanduser() if source.dir else data.fetch_ml100k())
    for note in dataset.warnings:
        print(f"[start] warning: {note}", flush=True)
    return dataset.head(source.max_ratings)


def split_for(enc: Encoded, protocol: str, seed: int) -> Split:
    """The train/test split a named evaluation protocol prescribes."""
    p = get_protocol(protocol)
    return split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, p.split_method, p.test_fraction, seed)


def split_data(dataset: dict[str, bytes], settings: Settings) -> DataSplit:
    """The loaded data (``Dataset.to_bytes``) encoded, and split as ``settings.protocol`` says."""
    enc = encode(data.Dataset.from_bytes(dataset))
    return DataSplit(enc, split_for(enc, settings.protocol, settings.seed))


def ray_storage(flow: str, run_id: str, step: str) -> str:
    """Where a step's Ray results go (see ``movierec.cluster.storage_path``)."""
    return storage_path(flow, run_id, step)


def train_retrieval(data_split: DataSplit, settings: Settings, storage: str) -> RetrievalResult:
    """The retrieval model, trained with Ray Train on the training ratings."""
    from movierec.retrieval import train

    with ray_session(settings.ray):
        return train(data_split.enc, data_split.split.train, settings, storage)


def tune_ranking(data_split: DataSplit, settings: Settings, storage: str) -> RankingResult:
    """The rating model, searched with Ray Tune on the training ratings."""
    from movierec.ranking import tune_ranking as search

    with ray_session(settings.ray):
        return search(data_split.enc, data_split.split.train, settings, storage)


def build_index(retrieval: RetrievalResult, settings: Settings) -> RetrievalIndex:
    """Every user's and movie's vector, and the Annoy index over the movies', measured."""
    from movierec.index import build_index as build

    user_vecs, item_vecs = retrieval.embeddings()
    return build(user_vecs, item_vecs, settings.index, settings.seed)


def evaluate(data_split: DataSplit, retrieval: RetrievalResult, ranking: RankingResult, index: RetrievalIndex
             ) -> Report:
    """Every metric of the two-stage pipeline, retrieval alone and the baselines on the test split."""
    from movierec.evaluation import Evaluator

    return Evaluator(data_split.enc, data_split.split).run(index, retrieval.config, ranking.model())


def publish(data_split: DataSplit, retrieval: RetrievalResult, ranking: RankingResult, index: RetrievalIndex,
            settings: Settings, metadata: dict) -> tuple[bytes, Publication, bytes]:
    """(bundle, publication, wheel): the models zipped into a bundle (``movierec.bundle``) with the
    run's ``metadata``, packaged into a wheel and uploaded (``movierec.packaging``)."""
    from movierec.bundle import make_bundle
    from movierec.packaging import publish as upload

    bundle = make_bundle(data_split, retrieval, ranking, index, metadata, user_data=settings.publish.user_data)
    publication, wheel = upload(bundle, str(metadata["run_id"]), settings.publish)
    return bundle, publication, wheel
