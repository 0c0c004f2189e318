"""A throw-away PostgreSQL server on loopback, for the tests and the benchmark of the database source.

Debian's ``postgresql`` package (which `.ci/run` installs) provides the server; :func:`local_postgres`
makes a cluster in a temporary folder with ``initdb``, starts it with ``pg_ctl`` on the given port
(listening on 127.0.0.1 only, fsync off: nothing here must survive a crash) and removes it after.
PostgreSQL refuses to run as root: as root, the server runs as the package's ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "movierec"


def server_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, or None when the server is not installed."""
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    return Path(found).resolve().parent if found else None


@contextlib.contextmanager
def local_postgres(port: int, password: str) -> Iterator[str]:
    """A running server for the block: its URL (user ``movierec``, database ``postgres``; the
    password is ``password``, for PGPASSWORD)."""
    bindir = server_binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL's server is not installed: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="movierec-pg-"))
    root.chmod(0o755)
    as_owner = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text(password)
    data = root / "data"
    try:
        subprocess.run([*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={root / 'pw'}",
                        "-A", "scram-sha-256", "--no-sync"], check=True, capture_output=True, text=True)
        subprocess.run([*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, text=True, timeout=60)
        yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
