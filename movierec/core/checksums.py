"""sha256, the one checksum movierec uses: for downloads, bundle files and published wheels."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(data: bytes | Path) -> str:
    """Hex sha256 of ``data``, or of a file's content read in 1 MiB blocks."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    with open(data, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
