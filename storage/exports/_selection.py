"""Which rounds and votes count: the rules every export format and `refinery train` share.

`replay` reads the append-only log into a `LogState` (latest Round per id, LAST vote action per
(round, candidate, user), flags, removals, opt-outs). `Selection` applies the filters and the
exclusions to it and answers, per round: may it be used, who voted for what, the net votes of each
candidate, and which candidate each voter preferred to which.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from storage.journal import Journal
from storage.records import ModerationAction, Round, VoteEvent

NONE_IS_GOOD = 0  # the candidate number of the "none is good" reaction
# Rounds whose prompt describes their images: text-to-image (rerolls included) and conditioning
# refinements (img2img, whose prompt is the parent's prompt with the instruction folded in). An
# instruction edit's or an inpainting's prompt is the reply ("make it night", "a sunset"): it does not
# describe the picture, so text-to-image trainers must not see it as a caption.
CAPTIONED_MODES = frozenset({"text2img", "img2img"})
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # round ids become folder names


@dataclass(frozen=True)
class ExportFilters:
    since: float | None = None  # round created_at >= since
    until: float | None = None  # round created_at < until
    channel_id: int | None = None
    min_votes: int = 0  # rounds with fewer distinct voters are left out
    include_flagged: bool = False
    include_edit_rounds: bool = False  # instruct/inpaint rounds in caption-based formats (pairs, kto)
    excluded_users: frozenset[int] = frozenset()  # users who ran /forget-me (their events and rounds left out)

    def __post_init__(self) -> None:
        if self.min_votes < 0:
            raise ValueError(f"min_votes must be >= 0, got {self.min_votes}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(f"since ({self.since}) must be before until ({self.until})")

    def describe(self) -> dict[str, Any]:
        """The filters for the card and export.json: the excluded users as a COUNT, never their ids."""
        return {**vars(self), "excluded_users": len(self.excluded_users)}


@dataclass
class LogState:
    """The log as of `last_seq`: latest Round per id, final vote per (round, candidate, user), moderation."""

    rounds: dict[str, Round] = field(default_factory=dict)
    votes: dict[tuple[str, int, int], bool] = field(default_factory=dict)  # True: last action was "add"
    flagged: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    forgotten: set[int] = field(default_factory=set)
    last_seq: int = 0


def replay(journal: Journal, through_seq: int | None = None) -> LogState:
    """Replay the log up to the seq current at the start (or `through_seq`, to see it as it was then),
    so appends made meanwhile cannot half-land."""
    last = journal.last_seq()
    state = LogState(last_seq=last if through_seq is None else min(through_seq, last))
    # Each piece of state depends only on the order within its own kind, so read kind by kind (indexed).
    for kind in ("rounds", "votes", "moderation"):
        for event in journal.events(kind=kind):
            if event.seq > state.last_seq:
                break
            record = event.record
            if isinstance(record, Round):
                state.rounds[record.round_id] = record
            elif isinstance(record, VoteEvent):
                state.votes[(record.round_id, record.candidate, record.user_id)] = record.action == "add"
            elif isinstance(record, ModerationAction) and record.round_id and record.action in ("flag", "unflag"):
                (state.flagged.add if record.action == "flag" else state.flagged.discard)(record.round_id)
            elif isinstance(record, ModerationAction) and record.round_id and record.action == "remove":
                state.removed.add(record.round_id)  # final: no later action (not even unflag) brings it back
            elif isinstance(record, ModerationAction) and record.action == "forget_me" and record.target_user_id:
                state.forgotten.add(record.target_user_id)  # all their data goes, earlier events included
    return state


def public_model_id(model_id: str) -> str:
    """A hub id as it is; a local folder by its name only: an operator's absolute path is never published."""
    if PurePosixPath(model_id).is_absolute() or PureWindowsPath(model_id).is_absolute() or model_id.startswith("~"):
        return PurePosixPath(model_id.replace("\\", "/").rstrip("/")).name or "local-model"
    return model_id


def preferences(voters: dict[int, set[int]], n: int) -> Counter[tuple[int, int]]:
    """prefer[(w, l)]: how many voters picked candidate w and not candidate l (1-based, "none" excluded)."""
    ks = range(1, n + 1)
    return Counter((w, lose) for c in voters.values() for w in c - {NONE_IS_GOOD} for lose in ks if lose not in c)


def decided_pairs(voters: dict[int, set[int]], n: int) -> Iterator[tuple[int, int, int, int]]:
    """(winner, loser, voters for the winner, voters for the loser) of each pair the voters did not tie on."""
    prefer = preferences(voters, n)
    for a in range(1, n + 1):
        for b in range(a + 1, n + 1):
            if prefer[(a, b)] != prefer[(b, a)]:  # a tie, or nobody ranked the pair: it teaches nothing
                w, lose = (a, b) if prefer[(a, b)] > prefer[(b, a)] else (b, a)
                yield w, lose, prefer[(w, lose)], prefer[(lose, w)]


class Selection:
    """The log under a set of filters: which rounds may be used and what their voters said."""

    def __init__(self, state: LogState, data_dir: Path, filters: ExportFilters) -> None:
        self.state, self.data_dir, self.filters = state, Path(data_dir), filters
        self.excluded = state.forgotten | filters.excluded_users
        self.left_out: Counter[str] = Counter()  # why rounds were not used, for the card and training.json
        self._blocked: dict[str, bool] = {}
        self._voters: dict[str, dict[int, set[int]]] = {}
        for (rid, candidate, user), active in state.votes.items():
            if active and user not in self.excluded:
                self._voters.setdefault(rid, {}).setdefault(user, set()).add(candidate)

    def blocked(self, round_id: str) -> bool:
        """Removed, flagged (unless included) or an opted-out requester, here or in any ancestor."""
        # Rounds come oldest first, so parents are memoised and recursion stays shallow; False ends a cycle.
        if round_id not in self._blocked:
            self._blocked[round_id] = False
            rnd, st = self.state.rounds.get(round_id), self.state
            self._blocked[round_id] = (
                round_id in st.removed or (round_id in st.flagged and not self.filters.include_flagged)
                or (rnd is not None and rnd.requester_id in self.excluded)
                or (rnd is not None and rnd.parent_round_id is not None and self.blocked(rnd.parent_round_id)))
        return self._blocked[round_id]

    def source(self, relative: str) -> Path | None:
        """The file under the data directory, or None if missing or if the path would leave it."""
        rel = PurePosixPath(relative)
        safe = rel.parts and not rel.is_absolute() and ".." not in rel.parts
        return self.data_dir / rel if safe and (self.data_dir / rel).is_file() else None

    def usable(self, rnd: Round) -> bool:
        """Passes every filter and exclusion; counts the reason in `left_out` when not."""
        f, reason = self.filters, None
        if not SAFE_ID.match(rnd.round_id):
            reason = "bad round id"
        elif rnd.round_id in self.state.removed:
            reason = "removed by a moderator"
        elif self.blocked(rnd.round_id):
            reason = "flagged, opted out, or refines such a round"
        elif not ((f.since is None or rnd.created_at >= f.since) and (f.until is None or rnd.created_at < f.until)
                  and (f.channel_id is None or rnd.channel_id == f.channel_id)):
            reason = "outside the date range or channel"
        elif len(self.voters_of(rnd)) < f.min_votes:
            reason = f"fewer than {f.min_votes} voters"
        elif not rnd.image_paths or not all(self.source(p) for p in rnd.image_paths):
            reason = "image files missing"
        if reason is not None:
            self.left_out[reason] += 1
        return reason is None

    def rounds(self) -> list[Round]:
        """Every round of the log, oldest first (call `usable` on each)."""
        return sorted(self.state.rounds.values(), key=lambda r: (r.created_at, r.round_id))

    def captioned(self, rnd: Round) -> bool:
        """Its prompt describes its images (see CAPTIONED_MODES), or the filters take edit rounds too."""
        return rnd.mode in CAPTIONED_MODES or self.filters.include_edit_rounds

    def voters_of(self, rnd: Round) -> dict[int, set[int]]:
        """Each voter's final picks among the round's candidates (0 = "none is good")."""
        valid = set(range(len(rnd.image_paths) + 1))  # other numbers are noise
        votes = {user: chosen & valid for user, chosen in self._voters.get(rnd.round_id, {}).items()}
        return {user: chosen for user, chosen in votes.items() if chosen}

    @staticmethod
    def net_votes(voters: dict[int, set[int]], n: int) -> list[int]:
        """Per candidate: voters who picked it minus voters who said "none is good"."""
        none = sum(NONE_IS_GOOD in chosen for chosen in voters.values())
        return [sum(k in chosen for chosen in voters.values()) - none for k in range(1, n + 1)]

    @staticmethod
    def rejected_by_none(voters: dict[int, set[int]]) -> bool:
        return any(NONE_IS_GOOD in chosen for chosen in voters.values())


def candidate_model(rnd: Round, k: int) -> str:
    """What made candidate k (1-based): the base model, or the base model with the round's adapter."""
    base = public_model_id(rnd.model_id)
    with_adapter = rnd.adapter is not None and (rnd.arms is None or rnd.arms[k - 1 : k] == "a")
    return f"{base}+{rnd.adapter}" if with_adapter else base


@dataclass(frozen=True)
class Comparison:
    round_id: str
    adapter: str  # the adapter's label, name@sha256:<12 hex>
    voter: int
    adapter_position: int  # 1-based screen position of the adapter's candidate
    base_position: int
    adapter_won: bool
    created_at: float


def round_comparisons(rnd: Round, voters: dict[int, set[int]]) -> list[Comparison]:
    assert rnd.arms is not None and rnd.adapter is not None
    adapter = [k for k, arm in enumerate(rnd.arms, start=1) if arm == "a"]
    base = [k for k, arm in enumerate(rnd.arms, start=1) if arm == "b"]
    found = []
    for voter in sorted(voters):
        picked = voters[voter] - {NONE_IS_GOOD}
        for a in adapter:
            for b in base:
                if (a in picked) != (b in picked):  # otherwise a tie: both or neither picked
                    found.append(Comparison(rnd.round_id, rnd.adapter, voter, a, b, a in picked, rnd.created_at))
    return found
