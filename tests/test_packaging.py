"""Building and publishing wheels: versions, contents, atomic and idempotent uploads."""

import zipfile

import pytest
from packaging.version import Version

from movierec import packaging
from movierec.publish import BUNDLE_FILES


def test_run_version_is_pep440_and_uploadable():
    v = Version(packaging.run_version("1795493907879854", base="0.1.0"))
    assert str(v) == "0.1.0.post1795493907879854"
    assert v.local is None and not v.is_prerelease  # any index takes it; pip installs it without --pre
    assert Version(packaging.run_version("1795493907879855", "0.1.0")) > v  # later runs are newer
    other = packaging.run_version("argo-movierec-abc12", "0.1.0")
    assert Version(other).post is not None and other == packaging.run_version("argo-movierec-abc12", "0.1.0")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, tiny_bundle):
    return packaging.build_wheel(tiny_bundle, "0.1.0.post7", tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_code_bundle_and_console_script(wheel):
    assert wheel.name == "movierec-0.1.0.post7-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    for f in BUNDLE_FILES:
        assert f"movierec/bundle/{f}" in names
    assert "movierec/serving.py" in names and "movierec/cli.py" in names
    assert not [n for n in names if "__pycache__" in n]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Version: 0.1.0.post7" in text and "Requires-Dist: torch~=2.13.0" in text
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "movierec = movierec.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    init = zipfile.ZipFile(wheel).read("movierec/__init__.py").decode()
    assert '__version__ = "0.1.0.post7"' in init


def test_local_index_publish_is_idempotent(wheel, tmp_path):
    index = tmp_path / "idx"
    assert packaging.publish_to_directory(wheel, index) is True
    assert packaging.publish_to_directory(wheel, index) is False
    assert [p.name for p in (index / "packages").iterdir()] == [wheel.name]
    page = (index / "simple" / "movierec" / "index.html").read_text()
    assert f"../../packages/{wheel.name}#sha256={packaging._sha256(wheel)}" in page
    assert not list(index.glob(".incoming-*"))


def test_failed_upload_leaves_no_partial_package(wheel, tmp_path, monkeypatch):
    def broken_upload(*args, **kwargs):
        raise packaging.PublishError("network went away")

    monkeypatch.setattr(packaging, "_twine_upload", broken_upload)
    index = tmp_path / "idx"
    with pytest.raises(packaging.PublishError, match="network went away"):
        packaging.publish_to_directory(wheel, index)
    assert list((index / "packages").iterdir()) == []
    assert not list(index.glob(".incoming-*"))


def test_build_refuses_a_tree_without_packaging_files(tiny_bundle, tmp_path):
    with pytest.raises(packaging.PublishError, match="setup.cfg missing"):
        packaging.build_wheel(tiny_bundle, "0.1.0.post1", tmp_path, source_root=tmp_path)
