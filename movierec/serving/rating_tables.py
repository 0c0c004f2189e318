"""The rating model served with numpy alone: the folded model's tables (``RatingModel.fold``) in
``rating.npz``, so an installation that only recommends needs neither torch nor onnxruntime.

Folded, the rating model is per pair two row gathers from each side, a dot product, an add, a ReLU
and the head's last linear layer (``rating_model.combine``): a few numpy operations. Serving it with
numpy keeps the light install at numpy + Annoy (onnxruntime alone is ~70 MB, torch ~750 MB),
and costs nothing at import. ``movierec.training.export.rating_tables`` writes the tables at publishing
time and checks them against torch, as it checks the ONNX graph; :func:`onnx_session` runs that
graph where onnxruntime is installed (``movierec[onnx]``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class RatingTables:
    """``u``/``v``: user and movie embeddings (dot product), ``hu``/``hv``: their shares of the
    head's hidden layer (bias included), ``bu``/``bv``: biases (the global mean in ``bu``);
    ``w``/``b``: the head's last layer (hidden -> 1)."""

    u: np.ndarray
    hu: np.ndarray
    bu: np.ndarray
    v: np.ndarray
    hv: np.ndarray
    bv: np.ndarray
    w: np.ndarray
    b: np.ndarray

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Star ratings (0.5-5, float32) of aligned (user, movie) dense index pairs."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        hidden = np.maximum(self.hu[users] + self.hv[items], 0.0)
        dot = np.einsum("ij,ij->i", self.u[users], self.v[items])
        ratings = self.bu[users] + self.bv[items] + dot + hidden @ self.w + self.b
        return np.clip(ratings, 0.5, 5.0).astype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        """(users, movies)."""
        return len(self.u), len(self.v)

    def to_bytes(self) -> bytes:
        return npz_of(self)

    @classmethod
    def from_bytes(cls, blob: bytes) -> RatingTables:
        """The tables of ``rating.npz``, their shapes checked against each other (a ValueError
        says which disagree)."""
        tables = from_npz(cls, blob)
        n_users, n_items = tables.shape
        dim, hidden = tables.u.shape[1:], tables.w.shape
        checks = {
            "user tables": tables.hu.shape[0] == tables.bu.shape[0] == n_users and tables.bu.ndim == 1,
            "movie tables": tables.hv.shape[0] == tables.bv.shape[0] == n_items and tables.bv.ndim == 1,
            "embeddings": tables.u.ndim == tables.v.ndim == 2 and tables.v.shape[1:] == dim,
            "hidden layer": tables.hu.shape[1:] == tables.hv.shape[1:] == hidden and len(hidden) == 1,
            "output bias": tables.b.shape == (),
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"rating tables disagree: {', '.join(wrong)}")
        return tables


def npz_of(tables: object) -> bytes:
    """A dataclass of numpy tables as an ``.npz`` file, one array per field."""
    buf = io.BytesIO()
    np.savez(buf, **{f.name: getattr(tables, f.name) for f in fields(tables)})
    return buf.getvalue()


def from_npz(cls: type[T], blob: bytes) -> T:
    """The dataclass ``cls`` of float32 tables from :func:`npz_of`'s bytes (shapes unchecked)."""
    arrays = np.load(io.BytesIO(blob), allow_pickle=False)
    return cls(**{f.name: np.asarray(arrays[f.name], np.float32) for f in fields(cls)})


def onnx_session(model: bytes):
    """An onnxruntime session on one thread: serving answers single requests, where thread
    hand-offs cost more than they save."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
