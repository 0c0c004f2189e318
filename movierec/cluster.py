"""Starting and stopping Ray the same way in every step.

A local Ray instance gets explicit CPUs and no dashboard (2-core laptops have none to spare);
``address`` joins an existing cluster instead, shipping the ``movierec`` package to its workers.
Shutdown always happens, even when training raises, so a failed step never leaves Ray running.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import movierec


@contextlib.contextmanager
def ray_session(address: str = "", num_cpus: int = 2) -> Iterator[None]:
    import ray

    if address:
        pkg = str(Path(movierec.__file__).resolve().parent)
        ray.init(address=address, runtime_env={"py_modules": [pkg]}, logging_level="WARNING")
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="WARNING",
            configure_logging=True,
        )
    try:
        yield
    finally:
        ray.shutdown()


def storage_path(flow: str, run_id: str, step: str) -> str:
    """An absolute folder for Ray's results, one per run and step, beside Metaflow's datastore.

    It follows METAFLOW_DATASTORE_SYSROOT_LOCAL when set, so isolated test runs stay isolated.
    """
    root = os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL") or os.getcwd()
    path = Path(root).resolve() / ".movierec_ray" / flow / str(run_id) / step
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
