"""Fetching ML-100K (``movierec.data.fetch``): the recbole wheel from a local index, every file's
sha256 checked, nothing left behind on failure.

Every fixture file is written into pytest's ``tmp_path``; expected values are written out by hand.
"""

import hashlib
import importlib.util
import os
import zipfile
from pathlib import Path

import pytest

from movierec import data
from movierec.data import DataError

FAKE_FILES = {"ml-100k.inter": b"inter bytes\n", "ml-100k.item": b"item bytes\n", "ml-100k.user": b"user bytes\n"}
FAKE_SHA256 = {name: hashlib.sha256(content).hexdigest() for name, content in FAKE_FILES.items()}


def _fake_wheel(path: Path, files: dict[str, bytes] = FAKE_FILES) -> Path:
    """A minimal but valid recbole 1.2.1 wheel (pip insists on the .dist-info metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(data.ML100K_MEMBER_DIR + name, content)
        zf.writestr("recbole-1.2.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        zf.writestr("recbole-1.2.1.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("recbole-1.2.1.dist-info/RECORD", "")
    return path


def test_fake_checksums_are_the_hand_computed_ones():
    assert FAKE_SHA256["ml-100k.inter"] == hashlib.sha256(b"inter bytes\n").hexdigest()
    assert FAKE_SHA256["ml-100k.inter"] != FAKE_SHA256["ml-100k.item"]


def test_extract_ml100k_verifies_every_file(tmp_path: Path):
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    dest = tmp_path / "out" / "ml-100k"
    assert data.extract_ml100k(wheel, dest, checksums=FAKE_SHA256) == dest
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == FAKE_FILES
    assert [p.name for p in dest.parent.iterdir()] == ["ml-100k"]  # no temporary folder left behind


def test_extract_ml100k_wrong_checksum_leaves_dest_empty(tmp_path: Path):
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    dest = tmp_path / "out" / "ml-100k"
    # inter (checked first) matches, item does not: not even inter may land.
    bad = {**FAKE_SHA256, "ml-100k.item": "0" * 64}
    with pytest.raises(DataError) as info:
        data.extract_ml100k(wheel, dest, checksums=bad)
    message = str(info.value)
    assert str(wheel) in message and "recbole/dataset_example/ml-100k/ml-100k.item" in message
    assert f"sha256 {FAKE_SHA256['ml-100k.item']}, expected {'0' * 64}" in message
    assert not dest.exists() or not list(dest.iterdir())
    assert list(dest.parent.iterdir()) == []


def test_extract_ml100k_missing_member(tmp_path: Path):
    wheel = _fake_wheel(tmp_path / "w.whl", {"ml-100k.inter": b"inter bytes\n"})
    with pytest.raises(DataError, match="member recbole/dataset_example/ml-100k/ml-100k.item missing"):
        data.extract_ml100k(wheel, tmp_path / "dest", checksums=FAKE_SHA256)
    assert not (tmp_path / "dest").exists()


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A PEP 503 ``file://`` index holding the fake wheel, with pip cut off from every other source.

    fetch_ml100k passes only ``--index-url``: pip's config files and PIP_* variables (extra index
    URLs, find-links, constraints) would still be consulted, so they are switched off here.
    """
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed")
    simple = tmp_path / "index" / "simple"
    _fake_wheel(simple / "recbole" / "recbole-1.2.1-py3-none-any.whl")
    (simple / "recbole" / "index.html").write_text(
        '<html><body><a href="recbole-1.2.1-py3-none-any.whl">recbole-1.2.1-py3-none-any.whl</a></body></html>\n'
    )
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return simple.as_uri()


def test_fetch_ml100k_from_local_index(tmp_path: Path, local_index: str):
    dest = tmp_path / "data" / "ml-100k"
    assert data.fetch_ml100k(dest, index_url=local_index, wheel_sha256=None, checksums=FAKE_SHA256) == dest
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == FAKE_FILES
    # Already there and intact: returns at once, without asking the (now unreachable) index.
    missing_index = (tmp_path / "no-such-index").as_uri()
    assert data.fetch_ml100k(dest, index_url=missing_index, wheel_sha256=None, checksums=FAKE_SHA256) == dest


def test_fetch_ml100k_rejects_wheel_with_wrong_sha256(tmp_path: Path, local_index: str):
    dest = tmp_path / "data" / "ml-100k"
    with pytest.raises(DataError) as info:
        data.fetch_ml100k(dest, index_url=local_index, checksums=FAKE_SHA256)  # default: the real wheel's hash
    message = str(info.value)
    assert "recbole-1.2.1-py3-none-any.whl: sha256" in message
    assert f"expected {data.RECBOLE_WHEEL_SHA256}" in message
    assert not dest.exists() or not list(dest.iterdir())


def test_fetch_ml100k_reports_pip_failure(tmp_path: Path, local_index: str):
    empty_index = tmp_path / "empty-index"
    empty_index.mkdir()
    with pytest.raises(DataError, match=r"pip download recbole==1\.2\.1 failed"):
        data.fetch_ml100k(tmp_path / "dest", index_url=empty_index.as_uri(), wheel_sha256=None,
                          checksums=FAKE_SHA256)
    assert not (tmp_path / "dest").exists()
