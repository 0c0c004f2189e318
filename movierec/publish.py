"""The model bundle: everything serving needs, as files of bytes and plain data, nothing from Metaflow.

A bundle is a zip holding:

- ``model.json``: format, sizes, model settings, the index settings, run metadata and metrics
- ``ranking.pt``: the rating model's state_dict; ``retrieval.pt``: the two-tower state_dict
- ``vectors.npz``: every user's and movie's tower output (serving needs no tower at query time)
- ``items.ann``: the Annoy index over movie vectors
- ``ids.npz``: raw user and movie ids by dense index, release years, and each user's rated movies
- ``items.json``: titles and genres by dense index
- ``ranking.onnx``, ``user_tower.onnx``: the same models for onnxruntime (``movierec.export``),
  parity with torch checked; serving uses them when onnxruntime is installed

The publish step keeps the zip as an artifact and packages it into the wheel (``movierec.packaging``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from movierec.index import IndexSettings
from movierec.metrics import csr

if TYPE_CHECKING:  # packaging imports this module and must stay free of torch
    from movierec.features import Encoded
    from movierec.ranking import RankingResult
    from movierec.retrieval import RetrievalResult

BUNDLE_FORMAT = 1
BUNDLE_FILES = ("model.json", "ranking.pt", "retrieval.pt", "vectors.npz", "items.ann", "ids.npz", "items.json")
ONNX_FILES = ("ranking.onnx", "user_tower.onnx")  # optional: a model may not export (see movierec.export)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def make_bundle(enc: Encoded, train_idx: np.ndarray, retrieval: RetrievalResult, ranking: RankingResult,
                user_vecs: np.ndarray, item_vecs: np.ndarray, index_blob: bytes, index_settings: IndexSettings,
                metadata: dict) -> bytes:
    """Zip the trained models, vectors, index and vocabularies (see the module docstring)."""
    from movierec.export import export_serving_models

    indptr, rated = csr(enc.user_idx[train_idx], enc.item_idx[train_idx], enc.n_users)
    onnx_files, onnx_info = export_serving_models(ranking.model().fold(), retrieval.model(), enc.n_users, enc.n_items)
    files = {
        "model.json": json.dumps({
            "format": BUNDLE_FORMAT,
            "sizes": enc.vocab_sizes,
            "retrieval": asdict(retrieval.config),
            "ranking": ranking.params,
            "index": asdict(index_settings),
            "onnx": onnx_info,
            **metadata,
        }, indent=2, default=str).encode(),
        "ranking.pt": ranking.state,
        "retrieval.pt": retrieval.state,
        "vectors.npz": _npz(users=user_vecs.astype(np.float32), items=item_vecs.astype(np.float32)),
        "items.ann": index_blob,
        "ids.npz": _npz(user_ids=enc.user_ids, item_ids=enc.item_ids, years=enc.years,
                        rated_indptr=indptr, rated=rated),
        "items.json": json.dumps({"titles": enc.titles, "genres": enc.genres}).encode(),
        **onnx_files,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in (*BUNDLE_FILES, *onnx_files):
            zf.writestr(name, files[name])
    return buf.getvalue()


def read_bundle_metadata(bundle: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        return json.loads(zf.read("model.json"))
