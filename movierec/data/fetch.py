"""Fetching the real MovieLens 100K: the copy inside the ``recbole`` wheel on PyPI, downloaded
with pip (never installed) and checked by sha256, the wheel's and each file's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from movierec.core.checksums import sha256
from movierec.data.core import DataError

# The ML-100K copy inside the recbole 1.2.1 wheel on PyPI: pinned by the wheel's and each file's hash.
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "ml-100k"


def extract_ml100k(wheel: Path, dest: Path, checksums: dict[str, str] = ML100K_SHA256) -> Path:
    """Take the ML-100K files out of a recbole wheel into ``dest``, verifying each one's sha256.

    Files are checked in a temporary folder and moved into place only when all match, so a
    corrupt or tampered wheel leaves ``dest`` untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            for name, expected in checksums.items():
                member = ML100K_MEMBER_DIR + name
                try:
                    data = zf.read(member)
                except KeyError:
                    raise DataError(f"{wheel}: member {member} missing") from None
                actual = sha256(data)
                if actual != expected:
                    raise DataError(f"{wheel}: {member} sha256 {actual}, expected {expected}")
                (Path(tmp) / name).write_bytes(data)
        dest.mkdir(parents=True, exist_ok=True)
        for name in checksums:
            os.replace(Path(tmp) / name, dest / name)
    return dest


def fetch_ml100k(
    dest: Path = DEFAULT_DATA_DIR,
    index_url: str | None = None,
    wheel_sha256: str | None = RECBOLE_WHEEL_SHA256,
    checksums: dict[str, str] = ML100K_SHA256,
) -> Path:
    """Make sure the real MovieLens 100K lies in ``dest``; download it from PyPI when it does not.

    The data set is the copy GroupLens' files ship inside the ``recbole==1.2.1`` wheel. We
    ``pip download --no-deps`` that wheel (never install it: it pins an old Ray), check its hash,
    and extract only the three ML-100K files. ``index_url`` points pip at another index
    (tests use a local one).
    """
    dest = Path(dest)
    if all((dest / n).is_file() and sha256(dest / n) == s for n, s in checksums.items()):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp]
        if index_url:
            cmd += ["--index-url", index_url]
        print(f"movierec: downloading {RECBOLE_REQUIREMENT} (carries MovieLens 100K) ...", file=sys.stderr)
        proc = subprocess.run(cmd + [RECBOLE_REQUIREMENT], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(f"pip download {RECBOLE_REQUIREMENT} failed: {proc.stderr.strip()[-500:]}")
        if wheel_sha256 and sha256(wheels[0]) != wheel_sha256:
            raise DataError(f"{wheels[0].name}: sha256 {sha256(wheels[0])}, expected {wheel_sha256}")
        return extract_ml100k(wheels[0], dest, checksums)
