"""The arena's statistics: against known values, and in simulated arenas with and without a true effect."""

from __future__ import annotations

import numpy as np
import pytest

from storage.win_rate import RoundEvidence, WinRate, trials_needed


def test_wilson_interval_and_p_value_match_known_values() -> None:
    """431 wins of 783 → Wilson 95 % ≈ [51.5 %, 58.5 %], p ≈ 0.0053 (shared/notes/training.md)."""
    result = WinRate(431, 783)
    low, high = result.interval() or (0, 0)
    assert low == pytest.approx(0.5154, abs=5e-4) and high == pytest.approx(0.5850, abs=5e-4)
    assert result.rate == pytest.approx(431 / 783)
    assert result.p_value() == pytest.approx(0.00528, abs=5e-5)
    assert WinRate(5, 10).p_value() == pytest.approx(1.0)


def test_sample_sizes_for_55_and_60_percent() -> None:
    """55 % vs 50 % needs about 783 independent trials, 60 % about 194; symmetric below 50 %."""
    assert trials_needed(0.55) == 783
    assert trials_needed(0.60) == 194
    assert trials_needed(0.45) == 783
    assert trials_needed(0.5) is None
    with pytest.raises(ValueError, match=r"1\.0"):
        trials_needed(1.0)


def test_no_trials_give_no_numbers() -> None:
    """Nothing decided yet: no rate, no interval, no p-value, no sizing (never a division by zero)."""
    empty = WinRate(0, 0)
    assert empty.rate is None and empty.interval() is None and empty.p_value() is None
    nothing = RoundEvidence.of([(0, 0), (0, 0)])
    assert nothing.rounds == () and nothing.sign == WinRate(0, 0) and nothing.mean_share is None
    assert nothing.rounds_needed() is None


def test_the_round_is_the_unit() -> None:
    """24 rounds of 6 comparisons, 14 led by the adapter: the sign test's 14 of 24 (p ≈ 0.54, Wilson ≈
    39–76 %), not the 84 of 144 comparisons' p ≈ 0.055 (the arena measured in issue 22)."""
    rounds = [(6, 6)] * 12 + [(4, 6)] * 2 + [(0, 6)] * 8 + [(2, 6)] * 2  # 84 adapter wins of 144
    evidence = RoundEvidence.of(rounds)
    assert (evidence.adapter_wins, evidence.comparisons) == (84, 144)
    assert WinRate(84, 144).p_value() == pytest.approx(0.055, abs=1e-3)  # what counting comparisons claimed
    assert evidence.sign == WinRate(14, 24) and evidence.even == 0
    assert evidence.sign.p_value() == pytest.approx(0.541, abs=1e-3)
    low, high = evidence.sign.interval() or (0, 0)
    assert low == pytest.approx(0.388, abs=1e-3) and high == pytest.approx(0.755, abs=1e-3)
    assert evidence.mean_share == pytest.approx(84 / 144)


def test_even_rounds_are_evidence_but_not_signs() -> None:
    """A round of 3 adapter wins in 6 leans neither way: it counts as a round, not in the sign test."""
    evidence = RoundEvidence.of([(3, 6), (1, 2), (2, 2), (0, 4), (1, 1)])
    assert len(evidence.rounds) == 5 and evidence.even == 2 and evidence.sign == WinRate(2, 3)
    assert evidence.mean_share == pytest.approx((0.5 + 0.5 + 1 + 0 + 1) / 5)
    with pytest.raises(ValueError, match="3 of 2"):
        RoundEvidence(((3, 2),))


def test_rounds_needed_scale_with_the_rounds_that_lean() -> None:
    """A true 75 % needs 29 leaning rounds; when 1 round in 6 is even, 35 rounds with votes."""
    assert trials_needed(0.75) == 29
    leaning = RoundEvidence.of([(2, 2)] * 15 + [(0, 2)] * 5)
    assert leaning.sign.rate == 0.75 and leaning.rounds_needed() == 29
    with_even = RoundEvidence.of([(2, 2)] * 15 + [(0, 2)] * 5 + [(1, 2)] * 4)
    assert with_even.rounds_needed() == 35  # ceil(29 · 24 / 20)
    assert RoundEvidence.of([(2, 2)] * 5).rounds_needed() is None  # all one way: no rate to size
    assert RoundEvidence.of([(2, 2), (0, 2)]).rounds_needed() is None  # no effect observed


def simulated_arenas(rng: np.random.Generator, arenas: int, rounds: tuple[int, int],
                     adapter_pick: float | None) -> tuple[list[RoundEvidence], list[WinRate]]:
    """Arenas in which every voter on a round votes exactly as the others (perfectly correlated), 3–6 voters
    a round. `adapter_pick` None: taste-less, they pick the same random 1–3 of the 4 candidates; else they
    pick one candidate, an adapter's with that probability. Per arena: the round evidence, and the pooled
    comparisons (what counting comparisons as independent trials used)."""
    size = (arenas, rounds[1])
    length = rng.integers(rounds[0], rounds[1] + 1, size=arenas)
    voters = rng.integers(3, 7, size=size)
    adapter = rng.permuted(np.tile([1, 1, 0, 0], (*size, 1)), axis=-1)  # the draw of positions, per round
    if adapter_pick is None:
        count = rng.integers(1, 4, size=size)
        picked = rng.permuted(np.tile([0, 1, 2, 3], (*size, 1)), axis=-1) < count[..., None]
        ahead, behind = (adapter * picked).sum(-1), ((1 - adapter) * picked).sum(-1)
    else:
        ahead = (rng.random(size) < adapter_pick).astype(int)  # one picked image: the adapter's or the base's
        behind = 1 - ahead
    wins = voters * ahead * (2 - behind)  # picked adapter images over unpicked base ones, per voter, all voters
    losses = voters * behind * (2 - ahead)
    evidence, pooled = [], []
    for arena in range(arenas):
        n = length[arena]
        evidence.append(RoundEvidence.of(zip(wins[arena, :n].tolist(),
                                             (wins[arena, :n] + losses[arena, :n]).tolist(), strict=True)))
        pooled.append(WinRate(int(wins[arena, :n].sum()), int((wins[arena, :n] + losses[arena, :n]).sum())))
    return evidence, pooled


def test_correlated_taste_less_voters_are_not_called_significant() -> None:
    """1,500 arenas of 24–48 rounds whose voters all pick alike at random: the sign test over rounds calls at
    most ~5 % significant at 95 %; counting comparisons as independent called far more (the old defect)."""
    evidence, pooled = simulated_arenas(np.random.default_rng(22), 1500, (24, 48), adapter_pick=None)
    called = np.mean([(e.sign.p_value() or 1.0) < 0.05 for e in evidence])
    old = np.mean([(p.p_value() or 1.0) < 0.05 for p in pooled])
    assert called <= 0.06, called  # the exact test's size is ≤ 5 %; 0.06 leaves ~3 sd of simulation noise
    assert old >= 0.3, old  # comparisons as independent trials: about half the null arenas "significant"
    covered = np.mean([(lambda ci: ci[0] <= 0.5 <= ci[1])(e.sign.interval() or (0, 1)) for e in evidence])
    assert covered >= 0.93, covered  # the 95 % interval holds the true 50 %


def test_a_true_effect_is_called_significant_in_48_rounds() -> None:
    """Voters who pick an adapter image in 75 % of rounds: 48 rounds call it significant in most arenas
    (exact power ≈ 0.93), and the estimate is near 75 %."""
    evidence, _ = simulated_arenas(np.random.default_rng(7), 500, (48, 48), adapter_pick=0.75)
    power = np.mean([(e.sign.p_value() or 1.0) < 0.05 and (e.sign.rate or 0) > 0.5 for e in evidence])
    assert power >= 0.85, power
    assert np.mean([e.sign.rate for e in evidence]) == pytest.approx(0.75, abs=0.02)
