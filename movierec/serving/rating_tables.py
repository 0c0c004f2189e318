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
from typing import ClassVar

import numpy as np


class NpzTables:
    """Base of a frozen dataclass of float32 numpy tables that travels as an ``.npz`` file, one
    array per field, and whose shapes are checked against each other when it is read back: the
    numpy forms of the rating model (``rating.npz``) and of the item tower (``item_tower.npz``)."""

    KIND: ClassVar[str]  # what the tables are, for the error message

    def checks(self) -> dict[str, bool]:
        """Each shape agreement the tables need, by name."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{f.name: getattr(self, f.name) for f in fields(self)})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes):
        """The tables of :meth:`to_bytes`'s bytes, their shapes checked (``checks``; a ValueError
        says which disagree)."""
        arrays = np.load(io.BytesIO(blob), allow_pickle=False)
        tables = cls(**{f.name: np.asarray(arrays[f.name], np.float32) for f in fields(cls)})
        wrong = [name for name, ok in tables.checks().items() if not ok]
        if wrong:
            raise ValueError(f"{cls.KIND} tables disagree: {', '.join(wrong)}")
        return tables


@dataclass(frozen=True)
class RatingTables(NpzTables):
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

    KIND: ClassVar[str] = "rating"

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

    def checks(self) -> dict[str, bool]:
        n_users, n_items = self.shape
        dim, hidden = self.u.shape[1:], self.w.shape
        return {
            "user tables": self.hu.shape[0] == self.bu.shape[0] == n_users and self.bu.ndim == 1,
            "movie tables": self.hv.shape[0] == self.bv.shape[0] == n_items and self.bv.ndim == 1,
            "embeddings": self.u.ndim == self.v.ndim == 2 and self.v.shape[1:] == dim,
            "hidden layer": self.hu.shape[1:] == self.hv.shape[1:] == hidden and len(hidden) == 1,
            "output bias": self.b.shape == (),
        }


def onnx_session(model: bytes):
    """An onnxruntime session on one thread: serving answers single requests, where thread
    hand-offs cost more than they save."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
