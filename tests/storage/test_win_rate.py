"""The arena's statistics against known values."""

from __future__ import annotations

import pytest

from storage.win_rate import WinRate, comparisons_needed


def test_wilson_interval_and_p_value_match_known_values() -> None:
    """431 wins of 783 → Wilson 95 % ≈ [51.5 %, 58.5 %], p ≈ 0.0053 (shared/notes/training.md)."""
    result = WinRate(431, 783)
    low, high = result.interval() or (0, 0)
    assert low == pytest.approx(0.5154, abs=5e-4) and high == pytest.approx(0.5850, abs=5e-4)
    assert result.rate == pytest.approx(431 / 783)
    assert result.p_value() == pytest.approx(0.00528, abs=5e-5)
    assert WinRate(5, 10).p_value() == pytest.approx(1.0)


def test_sample_sizes_for_55_and_60_percent() -> None:
    """55 % vs 50 % needs about 783 decisive comparisons, 60 % about 194; symmetric below 50 %."""
    assert comparisons_needed(0.55) == 783
    assert comparisons_needed(0.60) == 194
    assert comparisons_needed(0.45) == 783
    assert comparisons_needed(0.5) is None
    with pytest.raises(ValueError, match=r"1\.0"):
        comparisons_needed(1.0)


def test_no_comparisons_give_no_numbers() -> None:
    """Nothing decided yet: no rate, no interval, no p-value (never a division by zero)."""
    empty = WinRate(0, 0)
    assert empty.rate is None and empty.interval() is None and empty.p_value() is None
