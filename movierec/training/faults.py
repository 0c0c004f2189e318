"""Fault injection for testing failure and ``resume``, controlled by the environment.

Metaflow's ``resume`` cannot change Parameters, so a test sets ``MOVIEREC_FAIL_STEP=<step>`` for
the failing run and clears it for the resumed one.
"""

from __future__ import annotations

import os

ENV_VAR = "MOVIEREC_FAIL_STEP"


class InjectedFault(RuntimeError):
    """Raised on purpose, so a test can tell it from a real failure."""


def maybe_fail(step: str) -> None:
    if os.environ.get(ENV_VAR, "") == step:
        raise InjectedFault(f"fault injected in step '{step}' ({ENV_VAR}={step})")
