"""The model bundle: everything serving needs, as bytes and plain data, nothing from Metaflow.

The publish step stores it as an artifact; packaging it into a wheel builds on this.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict

import numpy as np

from movierec.features import Encoded
from movierec.index import IndexSettings
from movierec.ranking import RankingResult
from movierec.retrieval import RetrievalResult

BUNDLE_FORMAT = 1


def make_bundle(enc: Encoded, retrieval: RetrievalResult, ranking: RankingResult, index_blob: bytes,
                index_settings: IndexSettings, metadata: dict) -> bytes:
    """A zip of weights (state_dicts), the Annoy index, id/title vocabularies and metadata as JSON."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("retrieval.pt", retrieval.state)
        zf.writestr("ranking.pt", ranking.state)
        zf.writestr("items.ann", index_blob)
        ids = io.BytesIO()
        np.savez(ids, user_ids=enc.user_ids, item_ids=enc.item_ids, years=enc.years)
        zf.writestr("ids.npz", ids.getvalue())
        zf.writestr("items.json", json.dumps({"titles": enc.titles, "genres": enc.genres}))
        zf.writestr("model.json", json.dumps({
            "format": BUNDLE_FORMAT,
            "sizes": enc.vocab_sizes,
            "retrieval": asdict(retrieval.config),
            "ranking": ranking.params,
            "index": asdict(index_settings),
            **metadata,
        }, indent=2, default=str))
    return buf.getvalue()


def read_bundle_metadata(bundle: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        return json.loads(zf.read("model.json"))
