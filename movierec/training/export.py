"""Export of the serving models for runtimes without torch, each checked for parity with torch
before it is bundled.

The rating model's folded tables go into ``rating.npz`` (``movierec.serving.rating_tables``: what a light
installation rates with, numpy alone), and two ONNX graphs into the bundle:

- ``ranking.onnx``: the rating model, folded (``RatingModel.fold``): inputs ``users`` and
  ``items`` (int64 dense indices, any batch size), output ``ratings`` (float32 stars, 0.5-5);
- ``item_tower.npz`` (``item_tower_tables``): a two-tower model's item side without the id
  embedding, on numpy (``movierec.serving.item_tower``), for movies added after training;
- ``user_tower.onnx``: the retrieval model's user side (the two-tower user tower, or LightGCN's
  user table): input ``users``, output ``vectors`` (unit float32 rows), for services that
  compute a user's query vector themselves.

Both use torch's TorchScript-based exporter (``to_onnx`` says why) at opset ``OPSET``; each export (the
tables too) is run on a sample and its largest absolute difference from torch must be at most
``TOLERANCE``, or publishing fails rather than ship a model that answers differently.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from movierec.serving.rating_tables import RatingTables, onnx_session

OPSET = 18
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


class UserTower(nn.Module):
    """The part of a retrieval model that maps user indices to their query vectors."""

    def __init__(self, towers: nn.Module):
        super().__init__()
        self.towers = towers

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.towers.user_vectors(users)


def to_onnx(module: nn.Module, inputs: dict[str, torch.Tensor], output: str) -> bytes:
    """Serialized ONNX of ``module`` called on ``inputs`` (keyword order), batch dimension dynamic.

    The TorchScript-based exporter (``dynamo=False``), not torch.export's: these graphs are a few
    lookups, products and activations without control flow, which it traces in about 0.1 s, where
    torch.export's exporter took about 5 s a graph plus 4 s of imports (onnxscript's operator
    registry), most of the ``publish`` step. torch is pinned, and every graph must still answer
    like torch on a sample (``max_difference``) before it is bundled."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
        torch.onnx.export(
            module.eval(), tuple(inputs.values()), buffer, input_names=list(inputs), output_names=[output],
            dynamo=False, opset_version=OPSET, dynamic_axes={name: {0: "batch"} for name in [*inputs, output]})
    return buffer.getvalue()


def max_difference(model: bytes, module: nn.Module, inputs: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between onnxruntime's and torch's outputs on ``inputs``."""
    ours = onnx_session(model).run(None, inputs)[0]
    with torch.no_grad():
        ref = module(*(torch.as_tensor(v) for v in inputs.values())).numpy()
    if ours.shape != ref.shape:
        raise ExportError(f"ONNX output shape {ours.shape} differs from torch's {ref.shape}")
    return float(np.abs(ours - ref).max()) if ref.size else 0.0


def rating_tables(folded: nn.Module) -> RatingTables:
    """The numpy form of a FoldedRatingModel: its tables, and its head after the first layer, which
    must be a ReLU and one linear layer to one output (dropout is inactive in serving)."""
    layers = [m for m in folded.rest if not isinstance(m, nn.Dropout)]
    if [type(m) for m in layers] != [nn.ReLU, nn.Linear] or layers[1].out_features != 1:
        raise ExportError(f"rating.npz holds a head of ReLU + one linear layer to one output, not {layers}")
    with torch.no_grad():
        return RatingTables(*(t.numpy().astype(np.float32) for t in (folded.u, folded.hu, folded.bu, folded.v,
                                                                      folded.hv, folded.bv)),
                            w=layers[1].weight[0].numpy().astype(np.float32),
                            b=np.asarray(layers[1].bias[0].item(), np.float32))


def item_tower_tables(towers: nn.Module, features: dict[str, np.ndarray], *, sample: int = 2048, seed: int = 0
                      ) -> tuple[bytes, float] | None:
    """``item_tower.npz`` of a two-tower model (None for LightGCN, which knows movies by their
    ratings alone) and its largest difference from torch's ``content_vectors`` on a sample of the
    catalogue's movies, whose padded feature indices ``features`` holds (``Encoded.item_features``).
    Raises ExportError beyond ``TOLERANCE``."""
    from movierec.models.two_tower import TwoTower
    from movierec.serving.item_tower import ItemTowerTables

    if not isinstance(towers, TwoTower):
        return None
    item = towers.item
    if [type(m) for m in towers.item_mlp] != [nn.Linear, nn.ReLU, nn.Linear]:
        raise ExportError(f"item_tower.npz holds an item MLP of linear, ReLU, linear, not {list(towers.item_mlp)}")
    first, _, last = towers.item_mlp
    dim = item.id.embedding_dim  # the id embedding's columns come first (ItemEncoder.forward)
    with torch.no_grad():
        tables = ItemTowerTables(*(t.numpy().astype(np.float32) for t in (
            item.genres.weight, item.title.weight, item.year.weight, first.weight[:, dim:], first.bias,
            last.weight, last.bias)))
        rows = np.random.default_rng(seed).integers(0, len(features["year"]), sample)
        expected = towers.content_vectors(torch.as_tensor(rows)).numpy()
    difference = float(np.abs(tables({k: v[rows] for k, v in features.items()}) - expected).max())
    if difference > TOLERANCE:
        raise ExportError(f"item_tower.npz: numpy differs from torch by {difference:.2e} (> {TOLERANCE:g})")
    return tables.to_bytes(), difference


def export_serving_models(ranker: nn.Module | None, towers: nn.Module, n_users: int, n_items: int, *,
                          sample: int = 2048, seed: int = 0) -> tuple[dict[str, bytes], dict]:
    """The files for a bundle that run without torch (``rating.npz`` and the ONNX graphs) and what
    to record about them (opset, parity on a sample).

    ``ranker`` is a FoldedRatingModel, or None for implicit-only data (no rating model: only the
    user tower is exported); ``towers`` a TwoTower or EmbeddingTables. A user tower that reads rating
    histories (``--history``, ``--user-tower ratings``) uses sparse matrix products, which ONNX
    cannot express: it is left out and the reason recorded. Raises ExportError when a graph
    answers more than ``TOLERANCE`` away from torch.
    """
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, sample).astype(np.int64)
    items = rng.integers(0, n_items, sample).astype(np.int64)
    graphs, files, parity = {}, {}, {}
    info: dict = {"opset": OPSET, "sample_pairs": sample}
    left_out = {}
    if ranker is None:
        left_out["ranking.onnx"] = "implicit-only data: no rating model"
    else:
        graphs["ranking.onnx"] = (ranker, {"users": users, "items": items}, "ratings")
        tables = rating_tables(ranker)
        with torch.no_grad():
            expected = ranker(torch.as_tensor(users), torch.as_tensor(items)).numpy()
        files["rating.npz"] = tables.to_bytes()
        parity["rating.npz"] = float(np.abs(tables(users, items) - expected).max())
        if parity["rating.npz"] > TOLERANCE:
            raise ExportError(f"rating.npz: numpy differs from torch by {parity['rating.npz']:.2e} (> {TOLERANCE:g})")
    if not getattr(getattr(towers, "user", None), "reads_ratings", False):
        graphs["user_tower.onnx"] = (UserTower(towers), {"users": users}, "vectors")
    else:
        left_out["user_tower.onnx"] = "the user tower reads rating histories through sparse products"
    if left_out:
        info["left_out"] = left_out
    for name, (module, inputs, output) in graphs.items():
        files[name] = to_onnx(module, {k: torch.as_tensor(v[:8]) for k, v in inputs.items()}, output)
        parity[name] = max_difference(files[name], module, inputs)
        if parity[name] > TOLERANCE:
            raise ExportError(f"{name}: onnxruntime differs from torch by {parity[name]:.2e} (> {TOLERANCE:g})")
    return files, {**info, "files": list(files), "max_abs_diff": parity}
