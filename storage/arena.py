"""Arena rounds judged by their votes: base-vs-adapter comparisons, and the report built from them.

A voter who picked some but not all candidates of an arena round says, for every pair of one base and
one adapter candidate, which they preferred: the picked one beats the unpicked one; a pair both picked
or both unpicked is a tie and is dropped. The rounds and votes that count are the exports' own
(`storage.exports.Selection`: removed, flagged and opted-out rounds and votes are left out).

The report judges by rounds, not comparisons (a round's voters judge the same four images, so its
comparisons are not independent): each round's comparisons are pooled into one share, and the verdict,
interval and rounds still needed are `storage.win_rate`'s round-level statistics.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from storage.exports import Comparison, ExportFilters, Selection, replay, round_comparisons
from storage.journal import Journal
from storage.records import Round
from storage.win_rate import RoundEvidence, WinRate, trials_needed


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
    """What `/arena results` and `refinery arena report` show, per adapter (the statistics: storage.win_rate)."""

    adapter: str
    rounds: int  # usable arena rounds, with or without votes
    evidence: RoundEvidence  # per round with a decisive comparison: (adapter wins, decisive comparisons)
    voters: int  # people who made at least one decisive comparison
    by_position: dict[int, WinRate] = field(default_factory=dict)  # screen position → how often it won

    @property
    def needed(self) -> tuple[int | None, int]:
        """(more rounds needed for the observed effect, or None when there is none to size; leaning rounds
        a true 55 % needs in all)."""
        total = self.evidence.rounds_needed()
        more = None if total is None else max(0, total - len(self.evidence.rounds))
        return more, trials_needed(0.55) or 0

    def lines(self) -> list[str]:
        evidence, sign = self.evidence, self.evidence.sign
        if not evidence.rounds:
            return [f"**{self.adapter}**: {self.rounds} arena round(s), no decisive comparison yet."]
        if sign.n:
            low, high = sign.interval() or (0.0, 0.0)
            verdict = (f"adapter ahead in {sign.wins} of {sign.n} rounds that leaned one way ({sign.rate:.1%}, "
                       f"95 % CI {low:.1%}–{high:.1%}, sign test p = {sign.p_value():.3g} vs 50 %)")
        else:
            verdict = "no round leaned either way yet"
        more, at_55 = self.needed
        if more is not None:
            needed = f"about {more} more rounds with votes to detect a true {sign.rate:.1%}"
        elif sign.rate == 0.5 or not sign.n:
            needed = "no effect observed"
        else:  # every leaning round went one way: no rate short of certainty to size a test for
            needed = "too few rounds to size the effect (all leaned one way)"
        positions = " · ".join(f"#{k}: {w.rate:.0%} of {w.n}" for k, w in sorted(self.by_position.items())
                               if w.rate is not None)
        return [f"**{self.adapter}**: {verdict}",
                f"evidence: {len(evidence.rounds)} of {self.rounds} arena round(s) with a decisive vote "
                f"({evidence.even} even) · {self.voters} voter(s) · {evidence.comparisons} decisive comparisons "
                f"({evidence.adapter_wins} won by the adapter) · mean round share {evidence.mean_share:.1%}",
                f"needed: {needed} (55 % vs 50 %: {at_55} leaning rounds in all)",
                f"position check (how often the image at each position won a comparison): {positions}"]


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
        per_round: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # round → [adapter wins, comparisons]
        positions: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # position → [wins, comparisons]
        for c in items:
            per_round[c.round_id][0] += c.adapter_won
            per_round[c.round_id][1] += 1
            winner, loser = ((c.adapter_position, c.base_position) if c.adapter_won
                             else (c.base_position, c.adapter_position))
            positions[winner][0] += 1
            positions[winner][1] += 1
            positions[loser][1] += 1
        evidence = RoundEvidence.of((wins, n) for wins, n in per_round.values())
        reports.append(ArenaReport(name, rounds[name], evidence, len({c.voter for c in items}),
                                   {k: WinRate(w, n) for k, (w, n) in positions.items()}))
    return reports
