"""Is the adapter preferred? A win-rate over decisive comparisons, its Wilson interval, a binomial test
against 50 %, and how many comparisons a test needs. Pure functions over counts; scipy does the maths.

Sample size: the comparisons a two-sided one-sample proportion test (α = 0.05, power 0.8) needs to
tell a true win-rate p from 50 %: n = ((z_{1-α/2}·√(0.25) + z_{power}·√(p(1-p))) / (p - 0.5))², which
gives 783 for p = 0.55 and 194 for p = 0.60 (the figures in shared/notes/training.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import binomtest, norm

ALPHA, POWER = 0.05, 0.8


@dataclass(frozen=True)
class WinRate:
    wins: int
    comparisons: int  # decisive ones: ties never count

    @property
    def rate(self) -> float | None:
        return self.wins / self.comparisons if self.comparisons else None

    def interval(self, confidence: float = 0.95) -> tuple[float, float] | None:
        """The Wilson score interval of the win-rate (None without comparisons)."""
        if not self.comparisons:
            return None
        ci = binomtest(self.wins, self.comparisons, 0.5).proportion_ci(confidence_level=confidence, method="wilson")
        return float(ci.low), float(ci.high)

    def p_value(self) -> float | None:
        """Two-sided exact binomial test of "the win-rate is 50 %"."""
        if not self.comparisons:
            return None
        return float(binomtest(self.wins, self.comparisons, 0.5, alternative="two-sided").pvalue)


def comparisons_needed(rate: float, *, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Decisive comparisons needed to detect a true win-rate `rate` against 50 %; None at exactly 50 %."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be strictly between 0 and 1, got {rate}")
    if rate == 0.5:
        return None
    z_alpha, z_power = norm.ppf(1 - alpha / 2), norm.ppf(power)
    n = ((z_alpha * 0.5 + z_power * math.sqrt(rate * (1 - rate))) / (rate - 0.5)) ** 2
    return math.ceil(n)
