"""Reconciling votes with what Discord shows: the pure diff and the core's rules, on the fakes."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

from bot.vote_reconcile import ReadReactions, ShownReactions, VoteChange, vote_changes
from storage.journal import Journal
from storage.records import RoundPosted, VoteEvent, new_id
from tests.helpers import core_service, make_round

ONE, TWO, THREE = "1️⃣", "2️⃣", "3️⃣"
ALICE, BOB, CAROL = 11, 12, 13


@pytest.mark.parametrize(("journaled", "shown", "ignore", "expected"), [
    ({}, {}, (), []),
    ({1: {ALICE}}, {1: {ALICE}}, (), []),
    ({}, {2: {BOB, ALICE}}, (), [VoteChange(2, ALICE, "add"), VoteChange(2, BOB, "add")]),
    ({1: {ALICE}, 2: {BOB}}, {1: {ALICE, CAROL}, 0: {BOB}},
     (), [VoteChange(0, BOB, "add"), VoteChange(1, CAROL, "add"), VoteChange(2, BOB, "remove")]),
    ({3: {ALICE}}, {3: set()}, (), [VoteChange(3, ALICE, "remove")]),
    ({1: {ALICE}}, {2: {ALICE}}, {ALICE}, []),  # /forget-me: left as journaled either way
])
def test_vote_changes_turn_the_journal_into_what_discord_shows(
        journaled: Mapping[int, Collection[int]], shown: Mapping[int, Collection[int]], ignore: Collection[int],
        expected: list[VoteChange]) -> None:
    """Adds for reactions the journal lacks, removes for votes Discord no longer shows, in a stable order."""
    assert vote_changes(journaled, shown, ignore=ignore) == expected


def reads(table: dict[str, set[int]] | None) -> ReadReactions:
    """A Discord reader that shows `table` for every round message."""
    async def read(posted: RoundPosted) -> ShownReactions:
        return table
    return read


async def test_differences_are_journaled_as_reconciled_vote_events(tmp_path: Path) -> None:
    """One add and one remove, marked reconciled, with the round's message; a second run journals nothing."""
    async with core_service(tmp_path) as core:
        record = await core.posted_round(500, guild_id=9)
        await core.service.record_vote(message_id=500, user_id=ALICE, emoji=ONE, added=True, channel_id=7,
                                       guild_id=9)
        # while the bot was away: bob voted 2, alice took 1 back, carol reacted with a non-vote emoji
        summary = await core.service.reconciler.run(reads({TWO: {BOB}, "🔥": {CAROL}}))
        assert (summary.rounds, summary.skipped, summary.changes) == (1, 0, 2)
        votes = core.journal.records("votes")
        assert [(v.user_id, v.candidate, v.action, v.emoji, v.source) for v in votes] == [
            (ALICE, 1, "add", ONE, "gateway"), (ALICE, 1, "remove", ONE, "reconciled"),
            (BOB, 2, "add", TWO, "reconciled")]
        assert all((v.round_id, v.message_id, v.channel_id) == (record.round_id, 500, 7) for v in votes)
        assert (await core.service.reconciler.run(reads({TWO: {BOB}}))).changes == 0
        assert len(core.journal.records("votes")) == 3


async def test_an_unreadable_message_leaves_the_round_as_journaled(tmp_path: Path) -> None:
    """A deleted message (the reader says None) is not "nobody reacted": no vote is removed."""
    async with core_service(tmp_path) as core:
        record = await core.posted_round(501)
        await core.service.record_vote(message_id=501, user_id=ALICE, emoji=ONE, added=True, channel_id=7,
                                       guild_id=None)
        summary = await core.service.reconciler.run(reads(None))
        assert (summary.rounds, summary.skipped, summary.changes) == (1, 1, 0)
        assert await core.journal.vote_state(record.round_id) == {1: {ALICE}}


async def test_opted_out_users_are_not_reconciled(tmp_path: Path) -> None:
    """After /forget-me a user's reactions are not logged, by reconciliation either."""
    async with core_service(tmp_path) as core:
        record = await core.posted_round(502)
        await core.service.moderation.forget_me(BOB)
        await core.service.reconciler.run(reads({ONE: {BOB}, TWO: {ALICE}}))
        assert await core.journal.vote_state(record.round_id) == {2: {ALICE}}


async def test_a_live_event_during_the_read_wins(tmp_path: Path) -> None:
    """A reaction event that arrives while Discord is being read is newer than the listing: it stands."""
    async with core_service(tmp_path) as core:
        record = await core.posted_round(503)

        async def read(posted: RoundPosted) -> ShownReactions:
            # listed with alice on 1; then she takes it back, and the live event arrives before the diff
            await core.service.record_vote(message_id=503, user_id=ALICE, emoji=ONE, added=False, channel_id=7,
                                           guild_id=None)
            return {ONE: {ALICE}, THREE: {CAROL}}

        await core.service.reconciler.run(read)
        assert await core.journal.vote_state(record.round_id) == {3: {CAROL}}


async def test_only_rounds_of_the_last_reconcile_days_are_read(tmp_path: Path) -> None:
    """Rounds posted before `reconcile_days` are not read; the latest post of a round is; 0 turns it off."""
    days_ago = time.time() - 3 * 86_400
    read: list[int] = []

    async def record_read(posted: RoundPosted) -> ShownReactions:
        read.append(posted.message_id)
        return {}

    async with core_service(tmp_path, votes={"reconcile_days": 2}) as core:
        old = make_round(created_at=days_ago)
        await core.journal.append(old, RoundPosted(old.round_id, 600, 7, None, created_at=days_ago))
        recent = await core.posted_round(601)
        await core.journal.append(RoundPosted(recent.round_id, 602, 7, None))  # a repost: the live message
        await core.service.reconciler.run(record_read)
        assert read == [602]
    async with core_service(tmp_path, votes={"reconcile_days": 0}) as core:
        await core.posted_round(603)
        assert not core.service.reconciler.enabled
        assert (await core.service.reconciler.run(record_read)).rounds == 0 and read == [602]


def test_the_journal_finds_posts_by_their_own_time(tmp_path: Path) -> None:
    """`Journal.posted_since` goes by the RoundPosted record's created_at, oldest first."""
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        journal.append(RoundPosted("a", 1, 7, None, created_at=100.0), RoundPosted("b", 2, 7, 9, created_at=300.0),
                       RoundPosted("c", 3, 7, None, created_at=200.0))
        assert [p.message_id for p in journal.posted_since(200.0)] == [2, 3]
        assert journal.posted_since(301.0) == []
    finally:
        journal.close()


def test_a_vote_event_without_a_source_loads_as_live() -> None:
    """Journal rows from before reconciliation existed load with source "gateway"."""
    row = VoteEvent(new_id(), "r", 1, ALICE, ONE, "add", None, 7, 500).to_dict()
    del row["source"]
    assert VoteEvent.from_dict(row).source == "gateway"
    assert VoteEvent.from_dict(row | {"source": "reconciled"}).source == "reconciled"
