"""Loading a folder (``movierec.data.layouts``): layout detection, the Parquet cache (reuse,
invalidation, concurrent first loads, older formats) and zips (unpacked once, bombs and escapes refused).

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

import zipfile
from pathlib import Path

import pytest
from data_samples import HEADER, MOVIES_CSV, RATINGS_CSV, USERS_DAT, _assert_same, _write

from movierec import data
from movierec.data import DataError, layouts


def test_load_dataset_detects_grouplens_csv(csv_dir: Path):
    assert data.detect_layout(csv_dir) == "grouplens-csv"
    _assert_same(data.load_dataset(csv_dir, cache=False), data.load_grouplens_csv(csv_dir))
    assert not (csv_dir / ".parquet-cache").exists()


def test_detect_layout_rejects_unsupported_directory(tmp_path: Path):
    d = _write(tmp_path / "nothing", {"ratings.csv": RATINGS_CSV})  # movies.csv missing: no complete layout
    for call in (data.detect_layout, data.load_dataset):
        with pytest.raises(DataError) as info:
            call(d)
        message = str(info.value)
        assert str(d) in message and "no supported MovieLens layout" in message
        assert "ratings.csv + movies.csv" in message
    with pytest.raises(DataError, match="not a directory"):
        data.detect_layout(d / "ratings.csv")


def test_parquet_cache_reused_and_invalidated(csv_dir: Path, monkeypatch: pytest.MonkeyPatch):
    first = data.load_dataset(csv_dir)
    cache = csv_dir / ".parquet-cache"
    assert cache.is_dir()
    (fingerprint,) = [p for p in cache.iterdir()]
    assert sorted(p.name for p in fingerprint.iterdir()) == ["items.parquet", "meta.json", "ratings.parquet",
                                                             "users.parquet"]
    assert not list(csv_dir.glob(".tmp-*"))

    # The second load must come from the cache: the parser is not allowed to run.
    def refuse(directory):
        raise AssertionError("parsed again instead of reading the cache")

    files, optional, loader = data.LAYOUTS["grouplens-csv"]
    monkeypatch.setitem(data.LAYOUTS, "grouplens-csv", (files, optional, refuse))
    _assert_same(data.load_dataset(csv_dir), first)
    monkeypatch.setitem(data.LAYOUTS, "grouplens-csv", (files, optional, loader))

    # New content and a new size: the stale cache is replaced, the new row shows up.
    (csv_dir / "ratings.csv").write_text(RATINGS_CSV + "3,11,2.5,964990000\n")
    second = data.load_dataset(csv_dir)
    assert second.ratings.num_rows == 5
    assert second.ratings.slice(4).to_pylist() == [
        {"user_id": 3, "item_id": 11, "rating": 2.5, "timestamp": 964990000}
    ]
    (new_fingerprint,) = [p for p in cache.iterdir()]
    assert new_fingerprint.name != fingerprint.name
    _assert_same(data.load_dataset(csv_dir), second)


def test_cache_invalidated_by_users_dat(ml1m_dir: Path):
    data.load_dataset(ml1m_dir)
    (ml1m_dir / "users.dat").write_text(USERS_DAT + "3::M::25::12::12345\n")
    assert data.load_dataset(ml1m_dir).users.num_rows == 3


def _load_in_child(directory: str) -> int:
    return data.load_dataset(Path(directory)).ratings.num_rows


def test_concurrent_first_loads_all_succeed_and_leave_one_cache(csv_dir: Path):
    """12 of 50 concurrent first loads failed with 'Directory not empty' and left .tmp-* folders."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(8) as pool:
        counts = list(pool.map(_load_in_child, [str(csv_dir)] * 24))
    assert counts == [4] * 24
    assert len(list((csv_dir / ".parquet-cache").iterdir())) == 1
    assert not list(csv_dir.glob(".tmp-*"))


def test_a_cache_written_by_an_older_loader_is_not_read(csv_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A cache of the format before duplicates were dropped broke every load (KeyError in meta.json):
    the format is part of the cache key, so an older format's cache is never read."""
    monkeypatch.setattr(layouts, "CACHE_FORMAT", 1)
    data.load_dataset(csv_dir)
    (old,) = (csv_dir / ".parquet-cache").iterdir()
    (old / "meta.json").write_text('{"name": "ml-tiny", "layout": "grouplens-csv"}')  # as format 1 wrote it
    monkeypatch.undo()
    assert data.load_dataset(csv_dir).duplicates_dropped == 0
    assert [p.name for p in (csv_dir / ".parquet-cache").iterdir()] != [old.name]


def _zip(folder: Path, dest: Path, prefix: str) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                zf.write(f, f"{prefix}{f.name}")
    return dest


def test_a_zip_passed_as_it_is_loads_like_its_folder_and_is_unpacked_once(ml1m_dir: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """`--data-dir ml-1m.zip`: GroupLens' zips hold a top folder (ml-1m/...)."""
    archive = _zip(ml1m_dir, tmp_path / "ml-1m.zip", "ml-1m/")
    _assert_same(data.load_dataset(archive), data.load_dataset(ml1m_dir, cache=False))
    extracted = list((tmp_path / ".ml-1m.zip.unpacked").iterdir())
    assert len(extracted) == 1 and (extracted[0] / "ml-1m" / "ratings.dat").is_file()
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a: pytest.fail("unpacked again"))
    data.load_dataset(archive)  # unchanged zip: the unpacked copy (and its Parquet cache) is reused


def test_a_bad_zip_says_what_is_wrong_with_it(ml1m_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(data.DataError, match="broken.zip: not a readable zip file"):
        data.load_dataset(broken)
    unrelated = _zip(_write(tmp_path / "notes", {"README.txt": "hello"}), tmp_path / "notes.zip", "notes/")
    with pytest.raises(data.DataError, match="notes.zip: no supported MovieLens layout inside"):
        data.load_dataset(unrelated)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(data.DataError, match="would unpack outside its folder"):
        data.load_dataset(evil)
    assert not (tmp_path.parent / "outside.txt").exists()


def test_a_zip_bomb_is_refused_before_anything_is_unpacked_and_nothing_is_left(tmp_path: Path):
    """A 0.5 MB zip of zeros unpacked to 512 MiB before its layout was found missing, and stayed on
    disk. Now the layout is read from member names, a member compressed more than
    MAX_COMPRESSION_RATIO times is refused, and only the layout's files are unpacked."""
    zeros = bytes(8 << 20)  # 8 MiB of zeros: about 8 KB deflated
    no_data = tmp_path / "no-data.zip"
    with zipfile.ZipFile(no_data, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stuff/zeros.bin", zeros)
    with pytest.raises(DataError, match="no-data.zip: no supported MovieLens layout inside"):
        data.load_dataset(no_data)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml/ratings.csv", HEADER.encode() + zeros)
        zf.writestr("ml/movies.csv", MOVIES_CSV)
    with pytest.raises(DataError, match=r"bomb.zip: member 'ml/ratings.csv' would unpack [\d,]+ bytes to 8,388,640, "
                                        "more than 50 times"):
        data.load_dataset(bomb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip", "no-data.zip"]  # nothing unpacked, nothing left
    extra = tmp_path / "extra.zip"
    with zipfile.ZipFile(extra, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml/ratings.csv", HEADER + "1,1,4,10\n")
        zf.writestr("ml/movies.csv", MOVIES_CSV)
        zf.writestr("ml/zeros.bin", zeros)  # not part of the layout: never unpacked
    assert data.load_dataset(extra).ratings.num_rows == 1
    (unpacked,) = (tmp_path / ".extra.zip.unpacked").iterdir()
    assert sorted(p.name for p in (unpacked / "ml").iterdir() if p.is_file()) == ["movies.csv", "ratings.csv"]
