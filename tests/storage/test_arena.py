"""Arena comparisons from the log, and the report (`refinery arena report`) built on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.__main__ import main
from storage.arena import ArenaReport, arena_report, read_arena
from storage.journal import Journal
from storage.win_rate import RoundEvidence
from tests.storage.export_log import ANN, BEN, CAT, DAN, T0, add_round, moderate, vote

ADAPTER = "red@sha256:0123456789ab"


def arena_log(journal: Journal, data_dir: Path) -> dict[str, str]:
    """Two arena rounds (arms "abba" and "baab"), a flagged one, and an ordinary round."""
    rounds = {
        "one": add_round(journal, data_dir, "a fox", ANN, T0, adapter=ADAPTER, arms="abba"),
        "two": add_round(journal, data_dir, "a kite", ANN, T0 + 1, adapter=ADAPTER, arms="baab"),
        "flagged": add_round(journal, data_dir, "a storm", ANN, T0 + 2, adapter=ADAPTER, arms="abab"),
        "plain": add_round(journal, data_dir, "a cat", ANN, T0 + 3),
    }
    # one: BEN picks both adapter images (1, 4) → 4 adapter wins; CAT picks 2 (base) → 2 base wins;
    # DAN picks 1 and 2 (one of each) → a1-b2 tie, a1>b3, a4<b2, a4-b3 tie → 1 adapter win, 1 base win.
    for user, ks in ((BEN, (1, 4)), (CAT, (2,)), (DAN, (1, 2))):
        for k in ks:
            vote(journal, rounds["one"], k, user)
    vote(journal, rounds["two"], 2, BEN)  # two: adapter at 2 and 3 → 2 adapter wins
    vote(journal, rounds["two"], 0, CAT)  # "none is good" only: no comparison
    vote(journal, rounds["flagged"], 1, BEN)
    vote(journal, rounds["plain"], 1, BEN)
    moderate(journal, "flag", rounds["flagged"])
    return rounds


def test_comparisons_follow_the_votes_and_the_exclusions(journal: Journal, data_dir: Path) -> None:
    """Cross-arm pairs the voter did not tie on; flagged and ordinary rounds give none."""
    rounds = arena_log(journal, data_dir)
    log = read_arena(journal, data_dir)
    found = log.comparisons
    assert [r.round_id for r in log.rounds] == [rounds["one"], rounds["two"]]  # what /arena results may reveal
    assert {c.round_id for c in found} == {rounds["one"], rounds["two"]}
    assert sum(c.adapter_won for c in found) == 7 and len(found) == 10
    dan = sorted((c.adapter_position, c.base_position, c.adapter_won) for c in found if c.voter == DAN)
    assert dan == [(1, 3, True), (4, 2, False)]
    (report,) = arena_report(log)
    assert report.adapter == ADAPTER and report.rounds == 2 and report.voters == 3
    assert (report.evidence.adapter_wins, report.evidence.comparisons) == (7, 10)
    assert sorted(report.evidence.rounds) == [(2, 2), (5, 8)]  # one share per round, its voters pooled
    assert sum(w.n for w in report.by_position.values()) == 20  # each comparison has two positions


def test_the_cli_report(journal: Journal, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`refinery arena report` prints the rounds the adapter led, interval, p-value, the rounds, voters and
    comparisons behind them, the rounds needed and the position check."""
    arena_log(journal, data_dir)
    config = tmp_path / "refinery.toml"
    config.write_text(f'[storage]\ndata_dir = "{data_dir}"\n')
    assert main(["arena", "report", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{ADAPTER}: adapter ahead in 2 of 2 rounds that leaned one way (100.0%, 95 % CI" in out
    assert "sign test p = 0.5 vs 50 %" in out  # not the p = 0.344 of 7 of 10 comparisons counted as independent
    assert ("evidence: 2 of 2 arena round(s) with a decisive vote (0 even) · 3 voter(s) · 10 decisive comparisons "
            "(7 won by the adapter) · mean round share 81.2%") in out
    assert "too few rounds to size the effect (all leaned one way) (55 % vs 50 %: 783 leaning rounds" in out
    assert "position check" in out
    assert main(["arena", "report", "--config", str(config), "--name", "blue"]) == 0
    assert "no arena rounds for adapter 'blue'" in capsys.readouterr().out


def test_the_rounds_still_needed_are_rounds() -> None:
    """15 rounds led by the adapter, 5 by the base, 4 even: a true 75 % needs 35 rounds with votes, 11 more."""
    evidence = RoundEvidence.of([(8, 8)] * 15 + [(0, 6)] * 5 + [(2, 4)] * 4)
    report = ArenaReport(ADAPTER, 30, evidence, voters=7)
    assert report.needed == (11, 783)
    verdict, counted, needed, _ = report.lines()
    assert "adapter ahead in 15 of 20 rounds that leaned one way (75.0%" in verdict
    assert "24 of 30 arena round(s) with a decisive vote (4 even) · 7 voter(s) · 166 decisive comparisons" in counted
    assert needed.startswith("needed: about 11 more rounds with votes to detect a true 75.0%")
