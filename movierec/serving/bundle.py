"""The model bundle: everything serving needs, as files of bytes and plain data, nothing from Metaflow.

A bundle is a zip (or, inside an installed wheel, a folder) holding:

- ``model.json``: format, sizes, model settings, the index settings, run metadata and metrics,
  and the sha256 of every other file (checked on every load: a damaged file is refused by name
  instead of crashing Annoy or numpy)
- ``vectors.npz``: every movie's retrieval vector, baseline rating (global mean + movie bias; not
  for implicit-only data) and training popularity, and, with per-user data, every user's
  retrieval vector
- ``sources.npz``: the other candidate sources (``movierec.models.sources``), each source's arrays
  under its name (``ease/weights``, ``als/items``, with per-user data ``als/users``...);
  ``model.json``'s ``sources`` names them, with what each chose and its settings, and holds the
  learned ranker's standardisation and weights (``movierec.models.second_stage``)
- ``items.ann``: the Annoy index over movie vectors
- ``ids.npz``: raw movie ids and release years by dense index; with per-user data also raw user
  ids and each user's rated movies
- ``items.json``: titles and genres by dense index
- ``item_tower.npz``, with a two-tower retrieval model: its item side without the id embedding
  (``movierec.serving.item_tower``), which gives a movie added after training its vector from its
  genres, title and year; the vocabularies that encode them are rebuilt from ``items.json`` and
  the years (``movierec.core.movie_features``)
- with per-user data only: ``rating.npz`` (the folded rating model's tables, which serving rates
  with: ``movierec.serving.rating_tables``), ``ranking.pt`` (the rating model's state_dict), ``retrieval.pt`` (the
  retrieval model's) and the ONNX graphs ``ranking.onnx``/``user_tower.onnx`` (``movierec.training.export``,
  parity with torch checked for the tables and graphs). Each of them holds a row per user.
  A model of implicit-only data (``"implicit": true`` in ``model.json``) has no rating model, so
  none of ``rating.npz``, ``ranking.pt``, ``ranking.onnx``.

A bundle made with ``user_data=False`` has no user rows at all (no ids, vectors, rated lists or
models with user tables): it answers history-based requests only, for data whose users must not
travel inside a published wheel.

The publish step keeps the zip as an artifact and packages it into the wheel (``movierec.training.packaging``).
:func:`load_bundle` reads one into a :class:`Bundle`, every file checked against the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from movierec.core.checksums import sha256
from movierec.errors import BundleError, RecommenderError

if TYPE_CHECKING:  # imported where a bundle is checked: packaging reads bundles (read_bundle) without Annoy
    from movierec.core.movie_features import MovieVocabulary
    from movierec.models.index import Index
    from movierec.models.second_stage import Ranker, Rate
    from movierec.models.sources import CandidateSource
    from movierec.serving.item_tower import ItemTowerTables

BUNDLE_FORMAT = 7  # 2: sha256 of every file in model.json, per-user data optional; 3: sources and ranker;
# 4: rating.npz (served without torch); 5: models of implicit-only data (no rating model); 6: each source's
# arrays under its name in sources.npz (ALS's user factors moved there from vectors.npz), its settings in model.json;
# 7: item_tower.npz (a two-tower model's item side, for movies added after training)
CORE_FILES = ("model.json", "vectors.npz", "sources.npz", "items.ann", "ids.npz", "items.json")
ITEM_TOWER = "item_tower.npz"  # with a two-tower retrieval model (LightGCN knows movies by their ratings alone)
USER_FILES = ("rating.npz", "ranking.pt", "retrieval.pt")  # present when the bundle carries per-user data
RATING_FILES = ("rating.npz", "ranking.pt")  # ... and there is a rating model (not for implicit-only data)
ONNX_FILES = ("ranking.onnx", "user_tower.onnx")  # with per-user data, where the model exports (training.export)
KNOWN_FILES = (*CORE_FILES, *USER_FILES, *ONNX_FILES, ITEM_TOWER)
# Reading caps: a bundle is a file from somewhere else, so a zip bomb or a runaway file must not
# exhaust memory. ML-20M's largest file (ids.npz, 20M rated movies) is about 0.2 GB.
MAX_FILE_BYTES = 4 << 30
MAX_BUNDLE_BYTES = 8 << 30
MAX_JSON_BYTES = 256 << 20


def non_finite(arrays: dict[str, np.ndarray | None]) -> list[str]:
    """The names of ``arrays`` holding a NaN or an infinity: a model whose training diverged.
    Published, it would serve every score as null (JSON has no NaN); checked before publishing
    and again on loading."""
    return [name for name, values in arrays.items() if values is not None and not np.isfinite(values).all()]


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


BACKENDS = ("numpy", "onnx", "torch")


@dataclass
class Bundle:
    """A bundle read and checked (:func:`load_bundle`): every array agrees with the others in
    shape, every value is finite, every source is one this code knows and the ranker weighs only
    features the bundle provides, so a query cannot fail on the model (an IndexError, NaN scores,
    a source's feature silently zero). Per-user fields are None in a bundle without per-user data."""

    info: dict  # model.json
    origin: str  # where it was read from, for messages
    temperature: float  # of the retrieval model's logits
    user_data: bool
    implicit: bool  # trained on implicit-only data: no rating model
    item_vectors: np.ndarray  # [movies, dim] retrieval vectors
    baselines: np.ndarray | None  # [movies] global mean + movie bias (None: implicit-only data)
    popularity: np.ndarray  # [movies] training ratings
    user_vectors: np.ndarray | None  # [users, dim]
    item_ids: np.ndarray  # raw movie ids by dense index, increasing
    years: np.ndarray
    user_ids: np.ndarray | None  # raw user ids by dense index, increasing
    rated_indptr: np.ndarray | None  # each user's training movies, CSR over users
    rated: np.ndarray | None
    titles: list[str]
    genres: list[list[str]]
    index: Index  # Annoy over item_vectors
    sources: dict[str, CandidateSource]  # the fitted candidate sources by name, in the ranker's order
    ranker: Ranker
    backend: str  # what runs the rating model: numpy, onnx, torch; "none" where there is none to run
    rate: Rate | None  # stars of aligned (user, movie) index pairs; None without users or rating model
    # a new movie's retrieval vector from its features (None: the retrieval model reads no features)
    item_tower: ItemTowerTables | None = None
    movies: MovieVocabulary | None = None  # how a new movie's features are encoded, as the catalogue's were


def load_bundle(source: str | Path | bytes, backend: str = "numpy", origin: str | None = None) -> Bundle:
    """The bundle zip (a path or its bytes) or folder ``source``, every file checked against its
    recorded sha256 (:func:`read_bundle`) and against the others (:func:`check_bundle`), its
    rating model run by ``backend``. ``origin`` names it in messages (default: the path, or
    "bundle" for bytes). Raises BundleError naming the bundle and the file at fault."""
    info, files = read_bundle(source)
    return check_bundle(info, files, origin or ("bundle" if isinstance(source, bytes) else str(source)), backend)


@contextlib.contextmanager
def _reading(origin: str, name: str) -> Iterator[None]:
    """Any failure while one bundle file is parsed becomes a BundleError naming that file: a
    checksum cannot vouch for a file the publisher wrote wrong, and a user should see which file
    of which bundle is at fault, not a numpy or torch traceback."""
    try:
        yield
    except BundleError as exc:  # a candidate source's own check (movierec.models.sources), which names the source
        raise BundleError(f"{origin}: {name}: cannot be read ({exc})") from exc
    except RecommenderError:
        raise
    except Exception as exc:
        raise BundleError(f"{origin}: {name}: cannot be read ({type(exc).__name__}: {exc})") from exc


def _require(ok: bool, what: str) -> None:
    """Checks that a bundle's files agree with each other (inside ``_reading``, which names the
    file): a bad length or index would otherwise surface as an IndexError at query time."""
    if not ok:
        raise ValueError(what)


def _increasing(ids: np.ndarray) -> bool:
    """Ids are looked up by binary search: they must be sorted and distinct."""
    return bool(ids.ndim == 1 and (np.diff(ids) > 0).all())


def _named_sources(info: dict) -> dict[str, tuple[type[CandidateSource], dict]]:
    """(registered class, checked settings) of each candidate source model.json's ``sources``
    names. Read inside ``_reading(..., "model.json")``: an unknown source or a source's missing
    settings is a fault of model.json, not of sources.npz."""
    from movierec.models.sources import source_class

    named = info.get("sources")
    _require(isinstance(named, dict) and all(isinstance(v, dict) for v in named.values()),
             'names no candidate sources ("sources" must be an object of objects, one per source)')
    classes = {name: source_class(name) for name in named}
    return {name: (cls, cls.check_settings(named[name].get("settings", {}))) for name, cls in classes.items()}


def _load_sources(named: dict[str, tuple[type[CandidateSource], dict]], sources_npz: bytes, n_items: int,
                  n_users: int | None) -> dict[str, CandidateSource]:
    """Each source of ``named`` (:func:`_named_sources`) read from its ``<name>/`` arrays in
    ``sources_npz`` by its class, which checks them. Arrays of a source model.json does not name
    are refused."""
    values = np.load(io.BytesIO(sources_npz), allow_pickle=False)
    by_source: dict[str, dict[str, np.ndarray]] = {name: {} for name in named}
    for key in values.files:
        name, _, array = key.partition("/")
        _require(name in by_source, f"arrays {key!r} of a source model.json does not name")
        by_source[name][array] = values[key]
    return {name: cls.from_arrays(by_source[name], settings, n_items, n_users)
            for name, (cls, settings) in named.items()}


def check_bundle(info: dict, files: dict[str, bytes], origin: str = "bundle", backend: str = "numpy") -> Bundle:
    """The :class:`Bundle` of ``info`` and ``files`` as :func:`read_bundle` returns them (each
    file intact), after every check that its files agree with each other; BundleError naming
    ``origin`` and the file at fault otherwise."""
    from movierec.core.settings import IndexSettings
    from movierec.models.index import Index
    from movierec.models.second_stage import Ranker, features

    with _reading(origin, "model.json"):
        temperature = float(info["retrieval"]["temperature"])
        user_data = bool(info["user_data"])
        implicit = info.get("implicit", False)
        _require(isinstance(implicit, bool), "implicit is not true or false")
        settings = IndexSettings(**info["index"])
    with _reading(origin, "vectors.npz"):
        vectors = np.load(io.BytesIO(files["vectors.npz"]), allow_pickle=False)
        item_vectors = vectors["items"]
        n_items, dim = item_vectors.shape
        # the rating model's movie part; implicit-only data has no rating model
        baselines = None if implicit else vectors["item_baselines"]
        _require(implicit or baselines.shape == (n_items,), f"baselines for other than {n_items} movies")
        popularity = vectors["popularity"]
        _require(popularity.shape == (n_items,), f"popularity for other than {n_items} movies")
        user_vectors = vectors["users"] if user_data else None
        _require(not user_data or user_vectors.shape[1:] == (dim,), "user and movie vectors differ")
        diverged = non_finite({"items": item_vectors, "popularity": popularity, "item_baselines": baselines,
                               "users": user_vectors})
        _require(not diverged, f"NaN or infinite values in {', '.join(diverged)}")
    n_users = len(user_vectors) if user_data else None
    user_ids = rated_indptr = rated = None
    with _reading(origin, "ids.npz"):
        ids = np.load(io.BytesIO(files["ids.npz"]), allow_pickle=False)
        item_ids, years = ids["item_ids"], ids["years"]
        _require(item_ids.shape == years.shape == (n_items,), f"movie ids or years for other than {n_items} movies")
        _require(_increasing(item_ids), "movie ids are not sorted and distinct")
        if user_data:
            user_ids, rated_indptr, rated = ids["user_ids"], ids["rated_indptr"], ids["rated"]
            _require(user_ids.shape == (n_users,) and _increasing(user_ids),
                     f"user ids are not {n_users} sorted, distinct ids")
            _require(rated_indptr.shape == (n_users + 1,) and rated_indptr[0] == 0
                     and (np.diff(rated_indptr) >= 0).all() and rated_indptr[-1] == len(rated),
                     "rated_indptr does not index the rated movies")
            _require(((rated >= 0) & (rated < n_items)).all(), "a rated movie is not in the catalogue")
    with _reading(origin, "model.json"):
        named = _named_sources(info)
    with _reading(origin, "sources.npz"):
        sources = _load_sources(named, files["sources.npz"], n_items, n_users)
    with _reading(origin, "model.json"):
        ranker = info["ranker"]
        mean, scale, weights = (np.asarray(ranker[key], np.float32) for key in ("mean", "scale", "weights"))
        expected = features(sources, not implicit)
        unprovided = [f for f in ranker["features"] if f not in (*expected, "rating")]
        _require(not unprovided, f"the ranker weighs {', '.join(map(str, unprovided))}, which no candidate source "
                 f"of this bundle provides (its features: {', '.join(expected)})")
        _require(tuple(ranker["features"]) == expected and all(v.shape == (len(expected),)
                                                               for v in (mean, scale, weights)),
                 f"the ranker is not for this version's features{' of implicit-only data' if implicit else ''} "
                 f"({', '.join(expected)})")
        _require(all(np.isfinite(v).all() for v in (mean, scale, weights)) and (scale > 0).all(),
                 "the ranker's weights or feature scales are not finite positive numbers")
        ranker = Ranker(expected, mean, scale, weights, candidates=int(ranker["candidates"]), val_ndcg=float("nan"))
    with _reading(origin, "items.json"):
        items = json.loads(files["items.json"])
        titles, genres = items["titles"], items["genres"]
        _require(len(titles) == len(genres) == n_items, f"titles or genres for other than {n_items} movies")
    if backend not in BACKENDS:
        raise RecommenderError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    used, rate = "none", None
    if user_data and not implicit:
        with _reading(origin, {"numpy": "rating.npz", "onnx": "ranking.onnx", "torch": "ranking.pt"}[backend]):
            used, rate = backend, rating_backend(files, info, (n_users, n_items), backend)
            corners = rate(np.array([0, n_users - 1]), np.array([0, n_items - 1]))
            _require(corners.shape == (2,) and np.isfinite(corners).all(), "the rating model does not rate the "
                     "first and last user and movie")
    with _reading(origin, "items.ann"):
        index = Index(files["items.ann"], dim, settings)
        _require(len(index) == n_items, f"{len(index)} indexed movies for {n_items} movie vectors")
    tower = movies = None
    with _reading(origin, "model.json"):
        _require(ITEM_TOWER in files or info["retrieval"].get("model") != "two_tower",
                 f"a two-tower model without its {ITEM_TOWER}")
    if ITEM_TOWER in files:
        from movierec.core.movie_features import MovieVocabulary
        from movierec.serving.item_tower import ItemTowerTables

        with _reading(origin, ITEM_TOWER):
            tower = ItemTowerTables.from_bytes(files[ITEM_TOWER])
            movies = MovieVocabulary.of(titles, genres, years, title_width=int(info["movie_features"]["title_width"]))
            _require(tower.sizes == movies.sizes, f"feature tables of sizes {tower.sizes}, where the catalogue's "
                     f"titles, genres and years make {movies.sizes}")
            _require(movies.genre_width == info["movie_features"]["genre_width"], "genre rows of another width "
                     "than the catalogue's titles, genres and years make")
            _require(tower.w2.shape[0] == dim, f"vectors of {tower.w2.shape[0]} dimensions for movie vectors of {dim}")
            diverged = non_finite(dict(vars(tower)))
            _require(not diverged, f"NaN or infinite values in {', '.join(diverged)}")
    return Bundle(info=info, origin=origin, temperature=temperature, user_data=user_data, implicit=implicit,
                  item_vectors=item_vectors, baselines=baselines, popularity=popularity, user_vectors=user_vectors,
                  item_ids=item_ids, years=years, user_ids=user_ids, rated_indptr=rated_indptr, rated=rated,
                  titles=titles, genres=genres, index=index, sources=sources, ranker=ranker, backend=used, rate=rate,
                  item_tower=tower, movies=movies)


def rating_backend(files: dict[str, bytes], info: dict, shape: tuple[int, int], choice: str = "numpy") -> Rate:
    """``rate(user indices, movie indices)`` giving star ratings, with the runtime ``choice`` names:
    numpy (``rating.npz``), onnxruntime (``ranking.onnx``) or torch (``ranking.pt``; the training
    side's model, for installations with the ``train`` extra). The tables and the torch model must
    be for ``shape`` (users, movies); the graph is probed at its corners by the caller."""
    from movierec.serving.rating_tables import RatingTables, onnx_session

    if choice == "numpy":
        tables = RatingTables.from_bytes(files["rating.npz"])
        _require(tables.shape == shape, "the rating model is for another number of users or movies")
        return tables
    if choice == "onnx":
        if "ranking.onnx" not in files:
            raise RecommenderError("backend 'onnx': this bundle has no ranking.onnx (the model did not export)")
        try:
            graph = onnx_session(files["ranking.onnx"])
        except ImportError:
            raise RecommenderError("backend 'onnx' needs onnxruntime: pip install 'movierec[onnx]'") from None
        return lambda u, i: graph.run(None, {"users": np.asarray(u, np.int64), "items": np.asarray(i, np.int64)})[0]
    if choice == "torch":
        try:  # torch and what the training code imports with it (pyarrow...): the train extra
            import torch

            from movierec.models.rating_model import RatingModel
            from movierec.models.torch_runtime import state_from_bytes
        except ImportError as exc:
            raise RecommenderError(f"backend 'torch' needs the training code's packages ({exc.name} is missing): "
                                   "pip install 'movierec[train]'") from None
        torch.set_num_threads(1)  # single requests: thread start-up costs more than it saves
        folded = RatingModel.from_state(info["sizes"], info["ranking"], state_from_bytes(files["ranking.pt"])).fold()
        _require((len(folded.u), len(folded.v)) == shape, "the rating model is for another number of users or movies")

        def rate(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return folded(torch.as_tensor(users, dtype=torch.int64),
                              torch.as_tensor(items, dtype=torch.int64)).numpy()

        return rate
    raise RecommenderError(f"backend must be one of {', '.join(BACKENDS)}, got {choice!r}")


FLOW = "RecommenderFlow"
PROMOTED = "promoted"  # the run tag of a model the promotion gate let through (movierec.training.promotion)
PUBLISHED = "published:"  # + the wheel's version, 0.1.0.post<microseconds>


def published_us(run: object) -> int:
    """When ``run`` (a Metaflow Run) published, in microseconds, read from its ``published:<version>``
    tag (0 without one). Runs are ordered by it rather than by their creation time: Metaflow's local
    metadata rewrites a run's ``created_at`` whenever its tags change."""
    versions = [tag.removeprefix(PUBLISHED) for tag in run.user_tags if tag.startswith(PUBLISHED)]
    return max((int(v.rpartition(".post")[2]) for v in versions if v.rpartition(".post")[2].isdigit()), default=0)


def promoted_runs(flow: str = FLOW) -> list:
    """The successful runs of ``flow`` tagged ``promoted`` in Metaflow's current namespace, the
    latest promotion first."""
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    try:
        runs = [run for run in Flow(flow).runs(PROMOTED) if run.successful]
    except MetaflowNotFound:  # no run of the flow in this namespace
        return []
    return sorted(runs, key=published_us, reverse=True)


def bundle_of_run(run: str | None) -> tuple[str, bytes]:
    """(pathspec, bundle zip) of a RecommenderFlow run's publish step. ``run`` is
    ``"RecommenderFlow/<id>"`` or a bare run id, of any user; ``"promoted"``: the latest run the
    promotion gate let through; None: the latest successful run of this user (Metaflow's default
    namespace: a shared datastore holds other people's runs too) in the datastore this directory
    uses. Needs metaflow; raises BundleError saying what is missing."""
    try:
        from metaflow import Flow, Run, get_namespace, namespace
        from metaflow.exception import MetaflowException
    except ImportError:
        raise BundleError("no model is packaged with this installation of movierec: install a published wheel, "
                          "or pass --model with a bundle path (a Metaflow run id needs metaflow)") from None
    try:
        if run is None:
            found = Flow(FLOW).latest_successful_run
            if found is None:
                raise MetaflowException(f"no successful run of {FLOW} of yours")
        elif run == PROMOTED:
            found = next(iter(promoted_runs()), None)
            if found is None:
                raise MetaflowException(f"no run of {FLOW} of yours is tagged {PROMOTED}")
        else:
            before = get_namespace()
            namespace(None)  # a run id names one run, whoever made it
            try:
                found = Run(run if "/" in run else f"{FLOW}/{run}")
            finally:
                namespace(before)
        return found.pathspec, found["publish"].task.data.bundle
    except (MetaflowException, KeyError, AttributeError) as exc:
        if run is None:
            raise BundleError(f"no model: this installation packages none, and the local Metaflow datastore has "
                              f"no published run ({exc}); run the flow (make run), install a published wheel, or "
                              "pass --model with a bundle path or run id") from None
        raise BundleError(f"{run}: no published bundle of that {FLOW} run ({exc})") from None
