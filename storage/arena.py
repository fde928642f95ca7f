"""Arena rounds judged by their votes: base-vs-adapter comparisons, and the report built from them.

A voter who picked some but not all candidates of an arena round says, for every pair of one base and
one adapter candidate, which they preferred: the picked one beats the unpicked one; a pair both picked
or both unpicked is a tie and is dropped. The rounds and votes that count are the exports' own
(`storage.exports.Selection`: removed, flagged and opted-out rounds and votes are left out).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from storage.exports import Comparison, ExportFilters, Selection, replay, round_comparisons
from storage.journal import Journal
from storage.records import Round
from storage.win_rate import WinRate, comparisons_needed


@dataclass(frozen=True)
class ArenaLog:
    """The log's arena rounds (usable ones, as the exports' rules decide) and their comparisons."""

    rounds: list[Round]  # oldest first
    comparisons: list[Comparison]


def read_arena(journal: Journal, data_dir: Path, filters: ExportFilters | None = None) -> ArenaLog:
    """One replay of the log: every usable arena round and the comparisons its voters made."""
    selection = Selection(replay(journal), Path(data_dir), filters or ExportFilters())
    rounds = [r for r in selection.rounds() if r.arms and r.adapter and selection.usable(r)]
    return ArenaLog(rounds, [c for rnd in rounds for c in round_comparisons(rnd, selection.voters_of(rnd))])


@dataclass(frozen=True)
class ArenaReport:
    """What `/arena results` and `refinery arena report` show, per adapter."""

    adapter: str
    rounds: int
    result: WinRate
    by_position: dict[int, WinRate] = field(default_factory=dict)  # screen position → how often it won

    @property
    def needed(self) -> tuple[int | None, int]:
        """(comparisons needed for the observed effect, or None when it is 50 % or unknown; for 55 %)."""
        rate = self.result.rate
        observed = comparisons_needed(rate) if rate is not None and 0.0 < rate < 1.0 else None
        return observed, comparisons_needed(0.55) or 0

    def lines(self) -> list[str]:
        r = self.result
        if not r.comparisons:
            return [f"**{self.adapter}**: {self.rounds} arena round(s), no decisive comparison yet."]
        low, high = r.interval() or (0.0, 0.0)
        observed, at_55 = self.needed
        if observed is not None:
            more = f"about {max(0, observed - r.comparisons)} more decisive comparisons to detect a true {r.rate:.1%}"
        elif r.rate == 0.5:
            more = "no effect observed"
        else:  # every comparison went one way: no rate short of certainty to size a test for
            more = "too few comparisons to size the effect (all went one way)"
        positions = " · ".join(f"#{k}: {w.rate:.0%} of {w.comparisons}" for k, w in sorted(self.by_position.items())
                               if w.rate is not None)
        return [f"**{self.adapter}**: adapter won {r.wins} of {r.comparisons} decisive comparisons "
                f"({r.rate:.1%}, 95 % CI {low:.1%}–{high:.1%}, p = {r.p_value():.3g} vs 50 %) "
                f"in {self.rounds} round(s)",
                f"needed: {more} (55 % vs 50 %: {at_55} in all)",
                f"position check (how often the image at each position won): {positions}"]


def arena_report(log: ArenaLog, adapter_name: str | None = None) -> list[ArenaReport]:
    """Every adapter's report (or only `adapter_name`'s: its label starts with "<name>@")."""
    grouped: dict[str, list[Comparison]] = defaultdict(list)
    rounds: dict[str, int] = defaultdict(int)
    for comparison in log.comparisons:
        grouped[comparison.adapter].append(comparison)
    for rnd in log.rounds:
        rounds[str(rnd.adapter)] += 1
    reports = []
    for name in sorted(rounds):
        if adapter_name is not None and name.split("@", 1)[0] != adapter_name:
            continue
        items = grouped[name]
        positions: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # position → [wins, comparisons]
        for c in items:
            winner, loser = ((c.adapter_position, c.base_position) if c.adapter_won
                             else (c.base_position, c.adapter_position))
            positions[winner][0] += 1
            positions[winner][1] += 1
            positions[loser][1] += 1
        reports.append(ArenaReport(name, rounds[name], WinRate(sum(c.adapter_won for c in items), len(items)),
                                   {k: WinRate(w, n) for k, (w, n) in positions.items()}))
    return reports
