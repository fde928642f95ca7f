"""Is the adapter preferred? The arena's statistics, with the round as the unit of evidence.

Why rounds and not comparisons: every voter on an arena round judges the same four images, and one
vote gives two comparisons that share the picked image, so a round's comparisons rise and fall together.
Counting them as independent trials overstates the confidence (in one measured arena, 84 of 144
comparisons gave p = 0.055 while the adapter led in 14 of 24 rounds, p = 0.54).

Per round, all its voters pooled: the adapter's share of the round's decisive comparisons, a number in
[0, 1]. A round *leans* to the adapter (share > ½) or to the base (share < ½), or is even. The arms'
positions are a random draw, so when nobody prefers either arm every leaning round leans either way
with probability ½, however alike its voters vote and whatever positions they favour. Hence:
- the verdict: a two-sided exact sign test (binomial against 50 %) over the leaning rounds;
- the interval: the Wilson 95 % interval of the share of leaning rounds that lean to the adapter;
- the rounds still needed: the leaning rounds that sign test needs to detect the observed share
  (α 0.05, power 0.8), over the share of rounds that lean;
- the mean round share, a plain description of the effect's size.
Rounds are assumed independent of each other (different prompts, seeds and draws).

Sample size of a two-sided one-sample proportion test (α = 0.05, power 0.8) telling a true rate p from
50 %: n = ((z_{1-α/2}·√(0.25) + z_{power}·√(p(1-p))) / (p - 0.5))², which gives 783 for p = 0.55 and 194
for p = 0.60 (the figures in shared/notes/training.md). Pure functions over counts; scipy does the maths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import binomtest, norm

ALPHA, POWER = 0.05, 0.8


@dataclass(frozen=True)
class WinRate:
    """`wins` out of `n` independent trials (rounds for the verdict; comparisons for the position check)."""

    wins: int
    n: int  # decisive trials only: ties never count

    @property
    def rate(self) -> float | None:
        return self.wins / self.n if self.n else None

    def interval(self, confidence: float = 0.95) -> tuple[float, float] | None:
        """The Wilson score interval of the win-rate (None without trials)."""
        if not self.n:
            return None
        ci = binomtest(self.wins, self.n, 0.5).proportion_ci(confidence_level=confidence, method="wilson")
        return float(ci.low), float(ci.high)

    def p_value(self) -> float | None:
        """Two-sided exact binomial test of "the win-rate is 50 %"."""
        if not self.n:
            return None
        return float(binomtest(self.wins, self.n, 0.5, alternative="two-sided").pvalue)


def trials_needed(rate: float, *, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Independent trials needed to detect a true win-rate `rate` against 50 %; None at exactly 50 %."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be strictly between 0 and 1, got {rate}")
    if rate == 0.5:
        return None
    z_alpha, z_power = norm.ppf(1 - alpha / 2), norm.ppf(power)
    n = ((z_alpha * 0.5 + z_power * math.sqrt(rate * (1 - rate))) / (rate - 0.5)) ** 2
    return math.ceil(n)


@dataclass(frozen=True)
class RoundEvidence:
    """The arena's rounds that hold a decisive comparison, each as (adapter wins, decisive comparisons)."""

    rounds: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        for wins, comparisons in self.rounds:
            if not 0 <= wins <= comparisons or comparisons == 0:
                raise ValueError(f"a round needs 0 <= adapter wins <= decisive comparisons > 0, "
                                 f"got {wins} of {comparisons}")

    @classmethod
    def of(cls, rounds: Iterable[tuple[int, int]]) -> RoundEvidence:
        """From (adapter wins, decisive comparisons) per round; rounds without a decisive one are left out."""
        return cls(tuple((wins, n) for wins, n in rounds if n))

    @property
    def comparisons(self) -> int:
        return sum(n for _, n in self.rounds)

    @property
    def adapter_wins(self) -> int:
        return sum(wins for wins, _ in self.rounds)

    @property
    def sign(self) -> WinRate:
        """Rounds that leaned to the adapter, out of rounds that leaned either way (the sign test's counts)."""
        # 2·wins vs n instead of wins/n vs ½: integers, so a round of 3 wins in 6 is even, never off by rounding.
        ahead = sum(1 for wins, n in self.rounds if 2 * wins > n)
        behind = sum(1 for wins, n in self.rounds if 2 * wins < n)
        return WinRate(ahead, ahead + behind)

    @property
    def even(self) -> int:
        return len(self.rounds) - self.sign.n

    @property
    def mean_share(self) -> float | None:
        """The mean over rounds of the adapter's share of each round's decisive comparisons."""
        return sum(wins / n for wins, n in self.rounds) / len(self.rounds) if self.rounds else None

    def rounds_needed(self, rate: float | None = None) -> int | None:
        """Rounds (with a decisive comparison) the sign test needs to detect a true leaning share `rate`
        (default: the observed one), at the observed share of rounds that lean; None when there is no effect
        to size (no leaning round, or a share of exactly 0, ½ or 1)."""
        sign = self.sign
        rate = sign.rate if rate is None else rate
        if rate is None or not sign.n or not 0.0 < rate < 1.0 or rate == 0.5:
            return None
        leaning = trials_needed(rate)
        assert leaning is not None  # rate != 0.5
        return math.ceil(leaning * len(self.rounds) / sign.n)
