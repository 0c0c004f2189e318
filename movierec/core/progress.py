"""Progress lines for long work (loading, training epochs) that read well in a terminal and in logs.

Metaflow and Ray capture a step's output line by line, so a carriage-return progress bar (tqdm's)
would arrive as one unreadable line at the end. This prints a complete line at most every few
seconds instead: a bar, the share done, the rate and the time left.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _count(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


class Progress:
    """``p = Progress(total, "[train] epoch 1/3")``, then ``p.update(n)`` as work is done; quiet
    for short work, since nothing is printed before ``every`` seconds have passed."""

    def __init__(self, total: int, label: str, *, unit: str = "examples", every: float = 10.0, width: int = 20,
                 stream: TextIO | None = None):
        self.total, self.label, self.unit, self.every, self.width = max(1, total), label, unit, every, width
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = self.last = time.perf_counter()

    def line(self, now: float) -> str:
        share = min(1.0, self.done / self.total)
        filled = int(share * self.width)
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f}s left" if left != float("inf") else "?"
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} "
                f"{_count(self.done)}/{_count(self.total)} {self.unit}, {_count(rate)}/s, {eta}")

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)
