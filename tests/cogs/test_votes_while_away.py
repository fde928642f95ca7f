"""Votes cast or retracted while the bot was down, end to end: the real client, the loopback server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cogs.vote_reconcile import VoteReconciliation
from storage.journal import Journal
from storage.records import RoundPosted
from tests.cogs.test_votes import FOUR, ONE, TWO, make_round, settle
from tests.conftest import World
from tests.helpers import make_round as round_record

FAST = {"votes": {"reconcile_pace_s": 0.0}}


async def reconciled(app: Any) -> Any:
    """The reconciliation cog once its start-up run has finished (an extension's module is imported
    afresh by each bot, so its class is not this module's VoteReconciliation)."""
    cog = app.bot.get_cog(VoteReconciliation.__name__)
    assert cog is not None
    await asyncio.wait_for(cog.finished.wait(), timeout=30)
    return cog


async def test_votes_changed_while_the_bot_was_down_are_journaled_once(world: World, start_bot,
                                                                       tmp_path: Path) -> None:
    """Bob's reaction added and Alice's removed while the bot was down become one reconciled add and
    one reconciled remove at the next start; the bot's own emoji are not votes; a third start adds nothing."""
    data_dir = tmp_path / "data"
    async with start_bot(FAST, data_dir=data_dir) as app:
        message = await make_round(world)
        mid = int(message["id"])
        round_id = (await app.service.round_for_message(mid)).round_id
        await world.server.add_reaction(world.imagine, mid, world.alice, ONE)
        await settle(app, round_id, {1: {world.alice}})
    # the bot is down: Discord's state changes, and no bot hears of it
    await world.server.add_reaction(world.imagine, mid, world.bob, TWO)
    await world.server.remove_reaction(world.imagine, mid, world.alice, ONE)
    async with start_bot(FAST, data_dir=data_dir) as app:
        cog = await reconciled(app)
        assert cog.last is not None and (cog.last.rounds, cog.last.changes) == (1, 2)
        assert await app.journal.vote_state(round_id) == {2: {world.bob}}
        votes = [e.record for e in await app.journal.events("votes")]
        assert [(v.user_id, v.candidate, v.action, v.emoji, v.source) for v in votes] == [
            (world.alice, 1, "add", ONE, "gateway"), (world.alice, 1, "remove", ONE, "reconciled"),
            (world.bob, 2, "add", TWO, "reconciled")]
        assert all((v.round_id, v.message_id, v.channel_id) == (round_id, mid, world.imagine) for v in votes)
        # a reaction after the start is live as ever
        await world.server.add_reaction(world.imagine, mid, world.bob, FOUR)
        await settle(app, round_id, {2: {world.bob}, 4: {world.bob}})
    async with start_bot(FAST, data_dir=data_dir) as app:
        cog = await reconciled(app)
        assert cog.last is not None and (cog.last.rounds, cog.last.changes) == (1, 0)
        assert len(await app.journal.events("votes")) == 4


async def test_only_rounds_of_the_last_reconcile_days_are_listed(world: World, start_bot, tmp_path: Path) -> None:
    """A round older than `reconcile_days` is never read from Discord (no request names its message)."""
    data_dir = tmp_path / "data"
    server = world.server
    old_message = await server.send_message(world.imagine, world.alice, "a round from last week")
    new_message = await server.send_message(world.imagine, world.alice, "a round from this morning")
    long_ago = time.time() - 7 * 86_400
    old = round_record(channel_id=world.imagine, guild_id=server.guild_id, created_at=long_ago)
    new = round_record(channel_id=world.imagine, guild_id=server.guild_id)
    journal = Journal(data_dir / "journal.sqlite3")
    try:
        journal.append(old, RoundPosted(old.round_id, int(old_message["id"]), world.imagine, server.guild_id,
                                        created_at=long_ago),
                       new, RoundPosted(new.round_id, int(new_message["id"]), world.imagine, server.guild_id))
    finally:
        journal.close()
    for message in (old_message, new_message):  # both while no bot runs
        await server.add_reaction(world.imagine, int(message["id"]), world.bob, ONE)
    async with start_bot({"votes": {"reconcile_days": 2, "reconcile_pace_s": 0.0}}, data_dir=data_dir) as app:
        await reconciled(app)
        assert await app.journal.vote_state(new.round_id) == {1: {world.bob}}
        assert await app.journal.vote_state(old.round_id) == {}
    read = [r.path for r in server.requests if r.method == "GET" and "/messages/" in r.path]
    assert read and all(new_message["id"] in path for path in read)
    assert not any(old_message["id"] in path for path in read)


async def test_a_resume_after_a_gap_reconciles(world: World, start_bot, tmp_path: Path) -> None:
    """A reaction made while the gateway connection was down (Discord replays nothing here) is
    journaled once the session resumes, when the gap was at least `resume_gap_s`."""
    server = world.server
    message = await server.send_message(world.imagine, world.alice, "a round")
    record = round_record(channel_id=world.imagine, guild_id=server.guild_id)
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    try:
        journal.append(record, RoundPosted(record.round_id, int(message["id"]), world.imagine, server.guild_id))
    finally:
        journal.close()
    async with start_bot(FAST, data_dir=tmp_path / "data") as app:
        cog = await reconciled(app)
        cog.resume_gap_s = 0.0
        cog.finished.clear()
        await server.disconnect_bot(4000)  # resumable: discord.py RESUMEs
        await server.add_reaction(world.imagine, int(message["id"]), world.bob, TWO)  # no session hears it
        await asyncio.wait_for(cog.finished.wait(), timeout=30)
        assert await app.journal.vote_state(record.round_id) == {2: {world.bob}}
        [vote] = [e.record for e in await app.journal.events("votes")]
        assert vote.source == "reconciled"
