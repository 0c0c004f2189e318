"""Writing a run's model bundle: the trained stages as the files ``movierec.serving.bundle`` reads and checks.

Writing needs the training side (the export to numpy tables and ONNX, checked against torch); reading must
not, so an installed server never imports it.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from movierec.core.arrays import Interactions
from movierec.core.checksums import sha256
from movierec.models.sources import CandidateSource
from movierec.serving.bundle import BUNDLE_FORMAT, ITEM_TOWER, KNOWN_FILES, non_finite

if TYPE_CHECKING:
    from movierec.data.split import DataSplit
    from movierec.training.stages import TwoStage


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _source_arrays(sources: dict[str, CandidateSource], user_data: bool) -> dict[str, np.ndarray]:
    """Every source's arrays under its own name: ``<source>/<array>``."""
    return {f"{name}/{key}": value for name, source in sources.items()
            for key, value in source.to_arrays(user_data)[0].items()}


def make_bundle(data: DataSplit, stages: TwoStage, metadata: dict, user_data: bool = True) -> bytes:
    """Zip the trained models, vectors, index and vocabularies (the files ``movierec.serving.bundle`` lists);
    ``user_data=False`` leaves out everything that has a row per user."""
    from movierec.training.export import export_serving_models, item_tower_tables

    enc, train_idx = data.enc, data.split.train
    index, sources, ranker = stages.index, stages.sources.final, stages.ranker
    folded = stages.ranking.model().fold() if stages.ranking is not None else None
    towers = stages.retrieval.model()
    ids = {"item_ids": enc.item_ids, "years": enc.years}
    vectors = {"items": index.item_vectors.astype(np.float32),
               "popularity": np.bincount(enc.item_idx[train_idx], minlength=enc.n_items).astype(np.float32)}
    if folded is not None:
        vectors["item_baselines"] = folded.item_baselines()
    diverged = non_finite({**vectors, "users": index.user_vectors, **_source_arrays(sources, user_data=True)})
    if diverged:
        raise ValueError(f"not publishing a model with NaN or infinite values in {', '.join(diverged)}: its "
                         "training diverged")
    files: dict[str, bytes] = {}
    exports: dict = {"left_out": "published without per-user data"}
    if user_data:
        indptr, rated = Interactions.of(enc, train_idx, stars=False).csr()
        ids.update(user_ids=enc.user_ids, rated_indptr=indptr, rated=rated)
        vectors["users"] = index.user_vectors.astype(np.float32)
        exported, exports = export_serving_models(folded, towers, enc.n_users, enc.n_items)
        files.update({"retrieval.pt": stages.retrieval.state, **exported})
        if stages.ranking is not None:
            files["ranking.pt"] = stages.ranking.state
    tower = item_tower_tables(towers, enc.item_features)
    if tower is not None:  # movies added after training get vectors from their features (serving.item_tower)
        files[ITEM_TOWER] = tower[0]
        exports = {**exports, "files": [*exports.get("files", []), ITEM_TOWER],
                   "max_abs_diff": {**exports.get("max_abs_diff", {}), ITEM_TOWER: tower[1]}}
    sizes = dict(enc.vocab_sizes) if user_data else {k: v for k, v in enc.vocab_sizes.items() if k == "item"}
    files.update({
        "vectors.npz": _npz(**vectors),
        "sources.npz": _npz(**_source_arrays(sources, user_data)),
        "items.ann": index.blob,
        "ids.npz": _npz(**ids),
        "items.json": json.dumps({"titles": enc.titles, "genres": enc.genres}).encode(),
    })
    model = {
        "format": BUNDLE_FORMAT,
        "user_data": user_data,
        "implicit": stages.ranking is None,
        "sizes": sizes,
        "retrieval": asdict(stages.retrieval.config),
        "ranking": stages.ranking.params if stages.ranking is not None else None,
        "index": asdict(index.settings),
        "sources": {name: {**stages.sources.chosen[name], "settings": source.to_arrays(user_data)[1]}
                    for name, source in sources.items()},
        # the widths of the movies' padded genre and title rows, which serving pads a new movie's to
        "movie_features": {"genre_width": int(enc.item_features["genres"].shape[1]),
                           "title_width": int(enc.item_features["title"].shape[1])},
        "ranker": {"features": list(ranker.features), "mean": ranker.mean.tolist(), "scale": ranker.scale.tolist(),
                   "weights": ranker.weights.tolist(), "candidates": ranker.candidates},
        "exports": exports,
        **metadata,
        "files": {name: sha256(blob) for name, blob in files.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.json", json.dumps(model, indent=2, default=str).encode())
        for name in KNOWN_FILES:
            if name in files:
                zf.writestr(name, files[name])
    return buf.getvalue()
