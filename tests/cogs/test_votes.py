"""Votes by reaction, end to end: the real client, the loopback server, the journal, a real Oxen repo."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.conftest import World
from tests.oxen_reader import committed_rows

ONE, TWO, THREE, FOUR, NONE = "1️⃣", "2️⃣", "3️⃣", "4️⃣", "❌"


async def make_round(world: World, prompt: str = "a red fox") -> dict[str, Any]:
    interaction = await world.server.invoke_slash("imagine", {"prompt": prompt}, user_id=world.alice,
                                                  channel_id=world.imagine)
    await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)
    message = interaction.original
    assert message is not None
    # The bot's own four emoji arrive after the message; wait so they are surely processed.
    await world.server.wait_for_request(lambda r: r.method == "PUT" and FOUR in r.path
                                        and str(message["id"]) in r.path)
    return message


async def settle(app: Any, round_id: str, expected: dict[int, set[int]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = {k: v for k, v in (await app.journal.vote_state(round_id)).items() if v}
        if state == expected:
            return
        assert time.monotonic() < deadline, f"vote state {state} never became {expected}"
        await asyncio.sleep(0.02)


async def test_reactions_become_exact_votes_and_oxen_rows(world: World, start_bot, tmp_path: Path) -> None:
    """Add, remove, re-add and repeat from several users → exact state and event rows in Oxen."""
    carol = world.server.add_user("carol")
    async with start_bot(start_writer=True) as app:
        message = await make_round(world)
        mid = int(message["id"])
        round_id = (await app.service.round_for_message(mid)).round_id
        server, ch = world.server, world.imagine
        await server.add_reaction(ch, mid, world.alice, TWO)
        await server.add_reaction(ch, mid, world.bob, TWO)
        await server.add_reaction(ch, mid, world.bob, THREE)
        await server.remove_reaction(ch, mid, world.bob, THREE)  # retraction
        await server.add_reaction(ch, mid, carol, THREE)
        await server.remove_reaction(ch, mid, carol, THREE)
        await server.add_reaction(ch, mid, carol, THREE)  # re-add
        await server.add_reaction(ch, mid, carol, NONE)
        await server.add_reaction(ch, mid, world.alice, "🔥")  # not a vote emoji
        await settle(app, round_id, {2: {world.alice, world.bob}, 3: {carol}, 0: {carol}})
        assert app.writer is not None
        assert await asyncio.to_thread(app.writer.flush, 60)
        repo = app.config.oxen_repo_path
    committed = committed_rows(repo)
    votes = committed["tables"]["votes"]
    got = [(v["user_id"], v["candidate"], v["action"], v["emoji"]) for v in votes]
    assert got == [
        (world.alice, 2, "add", TWO), (world.bob, 2, "add", TWO), (world.bob, 3, "add", THREE),
        (world.bob, 3, "remove", THREE), (carol, 3, "add", THREE), (carol, 3, "remove", THREE),
        (carol, 3, "add", THREE), (carol, 0, "add", NONE),
    ]
    assert all(v["round_id"] == round_id and v["message_id"] == mid and v["channel_id"] == ch for v in votes)
    assert world.server.bot_user_id not in {v["user_id"] for v in votes}, "the bot's own emoji are not votes"
    assert [r["round_id"] for r in committed["tables"]["rounds"]] == [round_id]
    assert len([p for p in committed["images"] if p.startswith(f"images/{round_id}/")]) == 4


async def test_votes_on_a_round_from_before_a_restart_still_count(world: World, start_bot, tmp_path: Path
                                                                  ) -> None:
    """A round posted by one bot process takes votes after the bot restarts (raw events, journal lookup)."""
    data_dir = tmp_path / "shared-data"
    async with start_bot(data_dir=data_dir) as app:
        message = await make_round(world)
        round_id = (await app.service.round_for_message(int(message["id"]))).round_id
    async with start_bot(data_dir=data_dir) as app:
        await world.server.add_reaction(world.imagine, int(message["id"]), world.bob, FOUR)
        await settle(app, round_id, {4: {world.bob}})


async def test_votes_on_other_messages_are_ignored(world: World, start_bot) -> None:
    """A vote emoji on a message that is not a round journals nothing."""
    async with start_bot() as app:
        other = await world.server.send_message(world.general, world.alice, "hello")
        await world.server.add_reaction(world.general, int(other["id"]), world.bob, ONE)
        message = await make_round(world)
        await world.server.add_reaction(world.imagine, int(message["id"]), world.bob, ONE)
        round_id = (await app.service.round_for_message(int(message["id"]))).round_id
        await settle(app, round_id, {1: {world.bob}})
        stats = await app.journal.stats()
        assert stats.by_kind.get("votes") == 1


async def test_votes_of_users_who_ran_forget_me_are_not_logged(world: World, start_bot, tmp_path: Path) -> None:
    """After /forget-me a user's reactions are no longer journaled, also after a restart; others' are."""
    data_dir = tmp_path / "forget"
    async with start_bot(data_dir=data_dir) as app:
        message = await make_round(world)
        forget = await world.server.invoke_slash("forget-me", {}, user_id=world.bob, channel_id=world.imagine)
        await forget.wait_for(lambda i: bool(i.responses))
    async with start_bot(data_dir=data_dir) as app:
        round_id = (await app.service.round_for_message(int(message["id"]))).round_id
        await world.server.add_reaction(world.imagine, int(message["id"]), world.bob, ONE)
        await world.server.add_reaction(world.imagine, int(message["id"]), world.alice, TWO)
        # Bob's reaction came first: its journal read was queued on the journal's one thread before alice's,
        # so a (wrong) append of his would have landed before hers. Once hers is in, his is decided.
        await settle(app, round_id, {2: {world.alice}})
        assert (await app.journal.stats()).by_kind.get("votes") == 1


async def test_a_rate_limit_never_drops_a_retraction(world: World, start_bot) -> None:
    """Over `events_per_minute`, new votes are dropped, but removing a journaled vote still retracts it."""
    async with start_bot({"moderation": {"events_per_minute": 3}}) as app:
        message = await make_round(world)
        mid = int(message["id"])
        round_id = (await app.service.round_for_message(mid)).round_id
        for emoji in (ONE, TWO, THREE, FOUR):  # the fourth is over the limit: dropped
            await world.server.add_reaction(world.imagine, mid, world.bob, emoji)
        await world.server.remove_reaction(world.imagine, mid, world.bob, ONE)
        await world.server.add_reaction(world.imagine, mid, world.alice, NONE)  # a marker handled after it
        await settle(app, round_id, {2: {world.bob}, 3: {world.bob}, 0: {world.alice}})
        assert app.service.dropped_events == 1
