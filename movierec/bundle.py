"""The model bundle: everything serving needs, as files of bytes and plain data, nothing from Metaflow.

A bundle is a zip (or, inside an installed wheel, a folder) holding:

- ``model.json``: format, sizes, model settings, the index settings, run metadata and metrics,
  and the sha256 of every other file (checked on every load: a damaged file is refused by name
  instead of crashing Annoy or numpy)
- ``vectors.npz``: every movie's retrieval vector, baseline rating (global mean + movie bias; not
  for implicit-only data) and training popularity, and, with per-user data, every user's
  retrieval and ALS vectors
- ``sources.npz``: the other candidate sources (``movierec.sources``): EASEᴿ's item-item weights
  over the movies it covers, ALS's movie factors; ``model.json`` holds the learned ranker's
  standardisation and weights (``movierec.ranker``)
- ``items.ann``: the Annoy index over movie vectors
- ``ids.npz``: raw movie ids and release years by dense index; with per-user data also raw user
  ids and each user's rated movies
- ``items.json``: titles and genres by dense index
- with per-user data only: ``rating.npz`` (the folded rating model's tables, which serving rates
  with: ``movierec.rater``), ``ranking.pt`` (the rating model's state_dict), ``retrieval.pt`` (the
  retrieval model's) and the ONNX graphs ``ranking.onnx``/``user_tower.onnx`` (``movierec.export``,
  parity with torch checked for the tables and graphs). Each of them holds a row per user.
  A model of implicit-only data (``"implicit": true`` in ``model.json``) has no rating model, so
  none of ``rating.npz``, ``ranking.pt``, ``ranking.onnx``.

A bundle made with ``user_data=False`` has no user rows at all (no ids, vectors, rated lists or
models with user tables): it answers history-based requests only, for data whose users must not
travel inside a published wheel.

The publish step keeps the zip as an artifact and packages it into the wheel (``movierec.packaging``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from movierec.arrays import csr
from movierec.checksums import sha256
from movierec.errors import BundleError

if TYPE_CHECKING:  # packaging and serving import this module and must stay free of torch
    from movierec.split import DataSplit
    from movierec.stages import TwoStage

BUNDLE_FORMAT = 5  # 2: sha256 of every file in model.json, per-user data optional; 3: sources and ranker;
# 4: rating.npz (served without torch); 5: models of implicit-only data (no rating model)
CORE_FILES = ("model.json", "vectors.npz", "sources.npz", "items.ann", "ids.npz", "items.json")
USER_FILES = ("rating.npz", "ranking.pt", "retrieval.pt")  # present when the bundle carries per-user data
RATING_FILES = ("rating.npz", "ranking.pt")  # ... and there is a rating model (not for implicit-only data)
ONNX_FILES = ("ranking.onnx", "user_tower.onnx")  # with per-user data, where the model exports (movierec.export)
KNOWN_FILES = (*CORE_FILES, *USER_FILES, *ONNX_FILES)
# Reading caps: a bundle is a file from somewhere else, so a zip bomb or a runaway file must not
# exhaust memory. ML-20M's largest file (ids.npz, 20M rated movies) is about 0.2 GB.
MAX_FILE_BYTES = 4 << 30
MAX_BUNDLE_BYTES = 8 << 30
MAX_JSON_BYTES = 256 << 20


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def non_finite(arrays: dict[str, np.ndarray | None]) -> list[str]:
    """The names of ``arrays`` holding a NaN or an infinity: a model whose training diverged.
    Published, it would serve every score as null (JSON has no NaN); checked before publishing
    and again on loading."""
    return [name for name, values in arrays.items() if values is not None and not np.isfinite(values).all()]


def make_bundle(data: DataSplit, stages: TwoStage, metadata: dict, user_data: bool = True) -> bytes:
    """Zip the trained models, vectors, index and vocabularies (see the module docstring);
    ``user_data=False`` leaves out everything that has a row per user."""
    from movierec.export import export_serving_models

    enc, train_idx = data.enc, data.split.train
    index, sources, ranker = stages.index, stages.sources.final, stages.ranker
    folded = stages.ranking.model().fold() if stages.ranking is not None else None
    ids = {"item_ids": enc.item_ids, "years": enc.years}
    vectors = {"items": index.item_vectors.astype(np.float32),
               "popularity": np.bincount(enc.item_idx[train_idx], minlength=enc.n_items).astype(np.float32)}
    if folded is not None:
        vectors["item_baselines"] = folded.item_baselines()
    second = {}
    if sources.ease is not None:
        second.update(ease_items=sources.ease.items, ease_weights=sources.ease.weights)
    if sources.als is not None:
        second["als_items"] = sources.als.item_factors
    diverged = non_finite({**vectors, **second, "users": index.user_vectors,
                           "als_users": sources.als.user_factors if sources.als is not None else None})
    if diverged:
        raise ValueError(f"not publishing a model with NaN or infinite values in {', '.join(diverged)}: its "
                         "training diverged")
    files: dict[str, bytes] = {}
    exports: dict = {"left_out": "published without per-user data"}
    if user_data:
        indptr, rated = csr(enc.user_idx[train_idx], enc.item_idx[train_idx], enc.n_users)
        ids.update(user_ids=enc.user_ids, rated_indptr=indptr, rated=rated)
        vectors["users"] = index.user_vectors.astype(np.float32)
        if sources.als is not None:
            vectors["als_users"] = sources.als.user_factors
        exported, exports = export_serving_models(folded, stages.retrieval.model(), enc.n_users, enc.n_items)
        files.update({"retrieval.pt": stages.retrieval.state, **exported})
        if stages.ranking is not None:
            files["ranking.pt"] = stages.ranking.state
    sizes = dict(enc.vocab_sizes) if user_data else {k: v for k, v in enc.vocab_sizes.items() if k == "item"}
    files.update({
        "vectors.npz": _npz(**vectors),
        "sources.npz": _npz(**second),
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
        "sources": {**stages.sources.chosen,
                    **({"als_fold_in": {"regularization": sources.als.regularization, "alpha": sources.als.alpha}}
                       if sources.als is not None else {})},
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


def _check_sizes(source: str, sizes: dict[str, int]) -> None:
    """Refuse a bundle whose files (by unpacked size) pass the caps, before anything is read."""
    total = sum(sizes.values())
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(f"{source}: {total:,} bytes unpacked, more than the {MAX_BUNDLE_BYTES:,} a bundle may hold")
    for name, size in sizes.items():
        cap = MAX_JSON_BYTES if name.endswith(".json") else MAX_FILE_BYTES
        if size > cap:
            raise BundleError(f"{source}: {name}: larger than {cap:,} bytes")


def _from_zip(source: str, zf: zipfile.ZipFile) -> dict[str, bytes]:
    """The known members of a bundle zip, within the size caps (nothing else is read). zipfile
    reads no more than a member's recorded size; a member it cannot unpack (damaged deflate data,
    an unknown compression method, encryption) is named in a BundleError."""
    present = {info.filename: info for info in zf.infolist() if info.filename in KNOWN_FILES}
    _check_sizes(source, {name: info.file_size for name, info in present.items()})
    files = {}
    for name, info in present.items():
        try:
            files[name] = zf.read(info)
        except Exception as exc:  # zlib.error, NotImplementedError, RuntimeError, BadZipFile (CRC), ...
            raise BundleError(f"{source}: {name}: cannot be unpacked ({type(exc).__name__}: {exc})") from None
    return files


def _from_folder(source: str, folder: Path) -> dict[str, bytes]:
    present = {name: folder / name for name in KNOWN_FILES if (folder / name).is_file()}
    _check_sizes(source, {name: path.stat().st_size for name, path in present.items()})
    return {name: path.read_bytes() for name, path in present.items()}


def read_bundle(source: str | Path | bytes) -> tuple[dict, dict[str, bytes]]:
    """(model.json, {file name: bytes}) of a bundle zip (a path or its bytes) or folder, every
    file checked against the sha256 that model.json records. Raises BundleError naming the
    bundle and the file for anything missing, damaged, oversized or of another format."""
    where = "bundle" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes) or Path(source).is_file():
            with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as zf:
                files = _from_zip(where, zf)
        else:
            files = _from_folder(where, Path(source))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise BundleError(f"{where}: not a readable bundle ({exc})") from None
    if "model.json" not in files:
        raise BundleError(f"{where}: not a movierec bundle (no model.json)")
    try:
        info = json.loads(files.pop("model.json"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: model.json: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise BundleError(f"{where}: model.json: bundle format {found!r}, this movierec reads format "
                          f"{BUNDLE_FORMAT} (publish the model again with this version)")
    expected = info.get("files")
    if not isinstance(expected, dict):
        raise BundleError(f"{where}: model.json: no file checksums")
    user_files = [f for f in USER_FILES if not (info.get("implicit") and f in RATING_FILES)]
    required = [*CORE_FILES[1:], *(user_files if info.get("user_data") else ())]
    for name in sorted(set(required) | set(expected)):
        if name not in files:
            raise BundleError(f"{where}: {name}: missing")
        if sha256(files[name]) != expected.get(name):
            raise BundleError(f"{where}: {name}: checksum mismatch, the file is damaged or was changed")
    unexpected = sorted(set(files) - set(expected))
    if unexpected:
        raise BundleError(f"{where}: {', '.join(unexpected)}: not recorded in model.json")
    return info, files


FLOW = "RecommenderFlow"


def bundle_of_run(run: str | None) -> tuple[str, bytes]:
    """(pathspec, bundle zip) of a RecommenderFlow run's publish step. ``run`` is
    ``"RecommenderFlow/<id>"`` or a bare run id, of any user; None: the latest successful run of
    this user (Metaflow's default namespace: a shared datastore holds other people's runs too) in
    the datastore this directory uses. Needs metaflow; raises BundleError saying what is missing."""
    try:
        from metaflow import Flow, Run, namespace
        from metaflow.exception import MetaflowException
    except ImportError:
        raise BundleError("no model is packaged with this installation of movierec: install a published wheel, "
                          "or pass --model with a bundle path (a Metaflow run id needs metaflow)") from None
    try:
        if run is None:
            found = Flow(FLOW).latest_successful_run
            if found is None:
                raise MetaflowException(f"no successful run of {FLOW} of yours")
        else:
            namespace(None)
            found = Run(run if "/" in run else f"{FLOW}/{run}")
        return found.pathspec, found["publish"].task.data.bundle
    except (MetaflowException, KeyError, AttributeError) as exc:
        if run is None:
            raise BundleError(f"no model: this installation packages none, and the local Metaflow datastore has "
                              f"no published run ({exc}); run the flow (make run), install a published wheel, or "
                              "pass --model with a bundle path or run id") from None
        raise BundleError(f"{run}: no published bundle of that {FLOW} run ({exc})") from None
