"""Shared by the benchmark scripts: each owns one section of benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each script rewrites only its own section.\n"


def machine() -> str:
    """This machine's CPU as figures depend on it: the model, the cores this process may use, and
    the vector extensions that decide fp32 against bf16 (machines differ: AMD EPYC with AVX2 only,
    Intel with AVX-512 and AMX). From /proc/cpuinfo; the platform's name elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    extensions = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 BF16", "avx512_bf16"),
                                          ("AMX-BF16", "amx_bf16")) if flag in flags]
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {' + '.join(extensions) or 'no AVX2'}"


def update_section(name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``,
    stamped with the time and the machine (:func:`machine`)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = (f"_{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {machine()}, "
             f"Python {platform.python_version()}_\n\n")
    block = f"{start}\n{stamp}{body.rstrip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def emit(name: str, text: str, write: bool) -> None:
    """Print a benchmark's report and, unless asked not to, store it as its RESULTS.md section."""
    print(text)
    if write:
        update_section(name, text)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def mean_std(values: list[float | None]) -> str:
    """'0.4046 ± 0.0021' over seeds; '—' where the metric does not apply."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
