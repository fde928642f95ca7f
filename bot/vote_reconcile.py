"""Votes cast or retracted while the bot was away: compare recent rounds' reactions with the journal.

Discord does not replay reaction events a bot missed while it was down (or after a session it could
not resume), so the journal would keep votes Discord no longer shows and miss new ones. At start-up
(and after a resume that followed a gap) the rounds posted in the last `[votes] reconcile_days` are
compared with what Discord shows, and each difference is journaled as an ordinary vote event with
`source="reconciled"`. Reading Discord is the cog's job (cogs/vote_reconcile.py); what counts and
what is journaled is decided here, with no discord import.

A live reaction event that arrives while a round is being compared wins: Discord's listing may
already be stale by then, so that (candidate, user) is left to the live event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass

from bot.config import Config
from storage.async_journal import EventLog
from storage.records import RoundPosted, VoteEvent, new_id

log = logging.getLogger(__name__)

# emoji → ids of the people (not bots) whose reaction with it is on the message; None: the message
# is gone or unreadable, so nothing is known and the round is left as journaled.
ShownReactions = Mapping[str, Collection[int]] | None
ReadReactions = Callable[[RoundPosted], Awaitable[ShownReactions]]


@dataclass(frozen=True)
class VoteChange:
    candidate: int  # 1-based, 0 = "none is good"
    user_id: int
    action: str  # "add" or "remove"


@dataclass(frozen=True)
class ReconcileSummary:
    rounds: int  # round messages compared
    skipped: int  # of those, messages Discord could not show (deleted, no access)
    changes: int  # vote events journaled


def vote_changes(journaled: Mapping[int, Collection[int]], shown: Mapping[int, Collection[int]],
                 *, ignore: Collection[int] = ()) -> list[VoteChange]:
    """The vote events that turn the journal's state into what Discord shows (candidate → users), in
    a stable order; users in `ignore` (e.g. opted out by /forget-me) are left as they are."""
    changes = []
    for candidate in sorted({*journaled, *shown}):
        before = set(journaled.get(candidate, ())) - set(ignore)
        after = set(shown.get(candidate, ())) - set(ignore)
        changes += [VoteChange(candidate, user, "add") for user in sorted(after - before)]
        changes += [VoteChange(candidate, user, "remove") for user in sorted(before - after)]
    return changes


class VoteReconciler:
    """Compares recent rounds with Discord and journals the differences (see the module docstring)."""

    def __init__(self, config: Config, journal: EventLog, opted_out: Callable[[], Awaitable[set[int]]],
                 candidate_for_emoji: Callable[[str], int | None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.journal = journal
        self._opted_out = opted_out
        self._candidate_for_emoji = candidate_for_emoji
        self._clock = clock
        # round id → (candidate, user) pairs a live event touched while that round is being compared
        self._live: dict[str, set[tuple[int, int]]] = {}

    @property
    def enabled(self) -> bool:
        return self.config.votes.reconcile_days > 0

    def saw_live(self, round_id: str, candidate: int, user_id: int) -> None:
        """A live reaction event for this vote: a comparison in flight must not overrule it."""
        touched = self._live.get(round_id)
        if touched is not None:
            touched.add((candidate, user_id))

    async def recent_rounds(self) -> list[RoundPosted]:
        """The latest message of each round posted within `reconcile_days`, oldest first."""
        if not self.enabled:
            return []
        since = self._clock() - self.config.votes.reconcile_days * 86_400
        latest: dict[str, RoundPosted] = {}
        for posted in await self.journal.posted_since(since):
            latest.pop(posted.round_id, None)  # a repost: its latest message is the live one
            latest[posted.round_id] = posted
        return list(latest.values())

    async def run(self, read: ReadReactions) -> ReconcileSummary:
        """Compare every recent round with Discord (through `read`) and journal the differences."""
        rounds = skipped = changes = 0
        for posted in await self.recent_rounds():
            done = await self.reconcile(posted, read)
            rounds += 1
            skipped += done is None
            changes += len(done or ())
        summary = ReconcileSummary(rounds, skipped, changes)
        log.info("votes reconciled with Discord: %d round(s) compared, %d unreadable, %d change(s) journaled",
                 summary.rounds, summary.skipped, summary.changes)
        return summary

    async def reconcile(self, posted: RoundPosted, read: ReadReactions) -> list[VoteChange] | None:
        """Journal what changed on one round's message; None when Discord could not show it."""
        touched: set[tuple[int, int]] = set()
        self._live[posted.round_id] = touched  # from before the read: its result may be overtaken
        try:
            reactions = await read(posted)
            if reactions is None:
                return None
            shown: dict[int, set[int]] = {}
            for emoji, users in reactions.items():
                candidate = self._candidate_for_emoji(emoji)
                if candidate is not None:
                    shown.setdefault(candidate, set()).update(users)
            journaled = await self.journal.vote_state(posted.round_id)
            # /forget-me: like live reactions, their votes are no longer logged, either way.
            wanted = vote_changes(journaled, shown, ignore=await self._opted_out())
            done = []
            for change in wanted:
                # Checked right before queueing the append: a live event queued later lands after it.
                if (change.candidate, change.user_id) not in touched and await self._journal(posted, change):
                    done.append(change)
            return done
        finally:
            del self._live[posted.round_id]

    async def _journal(self, posted: RoundPosted, change: VoteChange) -> bool:
        emoji = self.config.votes.none_emoji if change.candidate == 0 else self.config.votes.emoji[change.candidate - 1]
        event = VoteEvent(event_id=new_id(), round_id=posted.round_id, candidate=change.candidate,
                          user_id=change.user_id, emoji=emoji, action=change.action, guild_id=posted.guild_id,
                          channel_id=posted.channel_id, message_id=posted.message_id, source="reconciled")
        if not await self.journal.append_vote(event):
            return False  # a live event made the same change meanwhile
        log.info("vote %s round %s #%d by user %s (reconciled)", change.action, posted.round_id,
                 change.candidate, change.user_id)
        return True
