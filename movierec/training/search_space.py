"""What the hyper-parameter searches share: search spaces drawn with the run's seed, and ASHA's
early stopping (``movierec.training.rating_search`` for the rating model,
``movierec.training.retrieval_search`` for the retrieval model).

Each search draws its trials' settings before it starts (``draw``), so the same seed tries the same
settings whether the trials run with Ray Tune or in the step's process; Ray Tune's own samplers are
seeded per process, not by the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Choice:
    """A hyper-parameter taking one of ``values``, each as likely."""

    values: tuple

    def sample(self, rng: np.random.Generator) -> object:
        return self.values[int(rng.integers(len(self.values)))]


@dataclass(frozen=True)
class Uniform:
    """A hyper-parameter drawn uniformly from [low, high), or its logarithm uniformly (``log``)."""

    low: float
    high: float
    log: bool = False

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        return float(rng.uniform(self.low, self.high))


def draw(space: dict[str, Choice | Uniform], samples: int, seed: int) -> list[dict]:
    """``samples`` trials' settings drawn from ``space`` (the same for the same seed)."""
    rng = np.random.default_rng(seed)
    return [{k: domain.sample(rng) for k, domain in space.items()} for _ in range(samples)]


@dataclass(frozen=True)
class Schedule:
    """Early stopping of the weaker trials, by asynchronous successive halving (ASHA): rungs at
    ``grace`` epochs times powers of ``reduction`` below ``max_epochs``."""

    max_epochs: int
    grace: int
    reduction: int = 3

    def tune(self) -> object:
        """Ray Tune's ASHAScheduler with these rungs."""
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(max_t=self.max_epochs, grace_period=self.grace, reduction_factor=self.reduction)

    def rungs(self) -> list[int]:
        """The epochs at which trials are compared, as ASHAScheduler places them."""
        count = int(np.log(self.max_epochs / self.grace) / np.log(self.reduction) + 1)
        return [self.grace * self.reduction ** k for k in range(count)]

    def stops(self, recorded: list[float], val_rmse: float) -> bool:
        """Whether a trial with ``val_rmse`` at a rung stops, given the scores ``recorded`` there
        before it: ASHAScheduler's rule (it maximises the negated metric), to the same bits."""
        if not recorded:
            return False
        return bool(-val_rmse < np.nanpercentile([-v for v in recorded], (1 - 1 / self.reduction) * 100))


