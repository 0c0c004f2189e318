"""Loading a data folder of any supported layout: which layout it holds (judged by file names),
the zip it may come as, the Parquet cache, and a folder in object storage.

``LAYOUTS`` is the one place that knows every layout's reader, which is why detection, zips and
the cache live here and not beside the readers: the readers import the core, this module imports
the readers, and nothing imports back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from movierec.data.core import DataError, Dataset, DataWarning, tidy
from movierec.data.movielens import load_grouplens_csv, load_grouplens_ml100k, load_ml1m, load_recbole_ml100k
from movierec.data.moviesdataset import load_movies_dataset

# layout -> (required files, optional files, loader)
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[Path], Dataset]]] = {
    "recbole": (("ml-100k.inter", "ml-100k.item", "ml-100k.user"), (), load_recbole_ml100k),
    "grouplens-ml100k": (("u.data", "u.item", "u.user"), ("u.genre",), load_grouplens_ml100k),
    "grouplens-csv": (("ratings.csv", "movies.csv"), (), load_grouplens_csv),
    "ml-1m": (("ratings.dat", "movies.dat"), ("users.dat",), load_ml1m),  # ml-10m too: no users.dat there
    # The Movies Dataset as Kaggle ships it has both sizes: the small one is read (see the loader)
    "movies-dataset-small": (("ratings_small.csv", "links_small.csv", "movies_metadata.csv"), (),
                             load_movies_dataset),
    "movies-dataset": (("ratings.csv", "links.csv", "movies_metadata.csv"), (), load_movies_dataset),
}


def detect_layout(directory: Path) -> str:
    """Which of the supported layouts ``directory`` holds, judged by its file names."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory (nor a .zip file of one)")
    for layout, (files, _, _) in LAYOUTS.items():
        if all((d / f).is_file() for f in files):
            return layout
    expected = "; ".join(" + ".join(files) for files, _, _ in LAYOUTS.values())
    raise DataError(f"{d}: no supported MovieLens layout found (expected one of: {expected})")


# Part of every cache key: a cache written by an older loader (other columns, no tidying) is never read.
CACHE_FORMAT = 2


def _fingerprint(directory: Path, files: tuple[str, ...]) -> str:
    h = hashlib.sha256(f"format {CACHE_FORMAT};".encode())
    for f in files:
        if (directory / f).exists():
            st = (directory / f).stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _write_cache(d: Path, cache_dir: Path, dataset: Dataset, layout: str) -> None:
    """Write the cache atomically (a temporary folder, then one rename): readers see a whole cache
    or none. Concurrent first loads of one folder race to the rename; a cache another process
    put there first is just as good, so losing the race is success, and no temporary is left."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from others sharing the data folder
        for key in ("ratings", "items", "users"):
            pq.write_table(getattr(dataset, key), tmp / f"{key}.parquet")
        (tmp / "meta.json").write_text(json.dumps({**dataset.meta(), "layout": layout}))
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.parent.iterdir():  # caches of earlier versions of the files
            if stale.name != cache_dir.name:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, cache_dir)
        except OSError:
            if not (cache_dir / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# An unpacked MovieLens zip is at most ML-25M's ~1.2 GB; this cap stops a zip bomb filling the disk.
MAX_UNPACKED_BYTES = 16 << 30
# GroupLens' files shrink 3-6 times in their zips; a member that claims to grow more than this is
# a zip bomb (zeros compress a thousandfold), refused before a byte of it is written. Members
# under a megabyte are too small to matter.
MAX_COMPRESSION_RATIO = 50
_RATIO_FLOOR_BYTES = 1 << 20


def _zip_layout(path: Path, members: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The members of the first layout in the zip ``path`` (its required and optional files, at
    the top or in one top folder, as GroupLens zips hold ``ml-1m/...``), judged by member names
    alone, so that nothing is unpacked from a zip that holds no data; and their sizes checked."""
    by_name = {m.filename: m for m in members if not m.is_dir()}
    folders = sorted({name.split("/", 1)[0] + "/" for name in by_name if "/" in name})

    def layout_in(folder: str) -> list[zipfile.ZipInfo]:
        for files, optional, _ in LAYOUTS.values():
            if all(folder + f in by_name for f in files):
                return [by_name[folder + f] for f in (*files, *optional) if folder + f in by_name]
        return []

    chosen = next(filter(None, map(layout_in, ("", *folders))), [])
    if not chosen:
        expected = "; ".join(" + ".join(files) for files, _, _ in LAYOUTS.values())
        raise DataError(f"{path}: no supported MovieLens layout inside (expected one of: {expected})")
    total = sum(m.file_size for m in chosen)
    if total > MAX_UNPACKED_BYTES:
        raise DataError(f"{path}: {total:,} bytes unpacked, more than the {MAX_UNPACKED_BYTES:,} allowed")
    for m in chosen:
        if m.file_size > _RATIO_FLOOR_BYTES and m.file_size > MAX_COMPRESSION_RATIO * max(1, m.compress_size):
            raise DataError(f"{path}: member {m.filename!r} would unpack {m.compress_size:,} bytes to "
                            f"{m.file_size:,}, more than {MAX_COMPRESSION_RATIO} times (a zip bomb?)")
    return chosen


def unpack_zip(path: Path) -> Path:
    """The folder holding the MovieLens layout inside the zip file ``path`` (a GroupLens download
    such as ``ml-1m.zip``, passed as it is). Only the layout's files are unpacked (the layout is
    found from member names, :func:`_zip_layout`), once, beside the zip, in
    ``.<name>.unpacked/<size and mtime>`` (or the temporary folder when that one is read-only),
    atomically like the Parquet cache, and reused while the zip is unchanged. Members with
    absolute or ``..`` paths, more than ``MAX_UNPACKED_BYTES`` or a compression ratio over
    ``MAX_COMPRESSION_RATIO`` are refused before anything is written; a failed unpacking leaves
    nothing behind."""
    st = path.stat()
    base = path.parent if os.access(path.parent, os.W_OK) else Path(tempfile.gettempdir())
    root = base / f".{path.name}.unpacked"
    dest = root / hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip file ({exc})") from None
    with zf:
        members = zf.infolist()
        unsafe = [m.filename for m in members
                  if m.filename.startswith(("/", "\\")) or ".." in Path(m.filename).parts]
        if unsafe:
            raise DataError(f"{path}: member {unsafe[0]!r} would unpack outside its folder")
        chosen = _zip_layout(path, members)
        folder = dest / Path(chosen[0].filename).parent
        if dest.is_dir():
            return folder
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            print(f"[data] unpacking {path} ({sum(m.file_size for m in chosen) / 1e6:,.0f} MB)", flush=True)
            zf.extractall(tmp, members=chosen)
            for stale in root.iterdir():  # unpacked copies of earlier versions of the zip
                if stale.name not in (tmp.name, dest.name) and not stale.name.startswith(".tmp-"):
                    shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path}: not a readable zip file ({exc})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not any(root.iterdir()):
                root.rmdir()
    return folder


def load_dataset(directory: Path, cache: bool = True) -> Dataset:
    """Load any supported layout, tidied (:func:`tidy`), through a Parquet cache keyed by the source
    files' size and mtime. ``directory`` may also be a zip file of one (:func:`unpack_zip`). The
    cache lives in ``<directory>/.parquet-cache`` (see :func:`_write_cache`); what tidying found
    is kept with it and reported again on every load."""
    d = Path(directory).resolve()
    if d.is_file() and (d.suffix.lower() == ".zip" or zipfile.is_zipfile(d)):
        d = unpack_zip(d)
    layout = detect_layout(d)
    files, optional, loader = LAYOUTS[layout]
    cache_dir = d / ".parquet-cache" / _fingerprint(d, files + optional)
    if cache and (cache_dir / "meta.json").is_file():
        meta = json.loads((cache_dir / "meta.json").read_text())
        tables = {k: pq.read_table(cache_dir / f"{k}.parquet") for k in ("ratings", "items", "users")}
        return Dataset(meta["name"], **tables, duplicates_dropped=meta["duplicates_dropped"],
                       warnings=meta["warnings"], implicit=meta.get("implicit", False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        dataset = loader(d)
    dataset.warnings += [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    dataset = tidy(dataset)
    if cache and os.access(d, os.W_OK):
        _write_cache(d, cache_dir, dataset, layout)
    return dataset


def load_remote_dataset(url: str) -> Dataset:
    """A MovieLens folder in object storage (``s3://bucket/prefix``): the files of the known
    layouts directly under it (not the rest of a download: ML-20M's genome scores alone are
    300 MB), downloaded with Metaflow's S3 client (the datastore's credentials and endpoint, so a
    step on Kubernetes or AWS Batch reads data with what the run's artifacts use) into a temporary
    folder and loaded as a local one, without a Parquet cache (the folder is gone after the load)."""
    from metaflow import S3

    known = {name for files, optional, _ in LAYOUTS.values() for name in (*files, *optional)}
    with tempfile.TemporaryDirectory(prefix="movierec-data-") as tmp, \
            S3(s3root=url.rstrip("/") + "/", tmproot=tmp) as s3:
        keys = [o.key for o in s3.list_paths() if o.exists and o.key.strip("/") in known]
        if not keys:
            expected = "; ".join(" + ".join(files) for files, _, _ in LAYOUTS.values())
            raise DataError(f"{url}: no MovieLens files there (expected one of: {expected})")
        folder = Path(tmp) / "data"
        folder.mkdir()
        print(f"[data] downloading {len(keys)} files from {url}", flush=True)
        for obj in s3.get_many(keys):
            shutil.move(obj.path, folder / Path(obj.key).name)
        return load_dataset(folder, cache=False)
