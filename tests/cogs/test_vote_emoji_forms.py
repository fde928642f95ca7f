"""Votes in another emoji spelling count, through the real discord.py client and the loopback server."""

from __future__ import annotations

from pathlib import Path

from tests.cogs.test_votes import make_round, settle
from tests.conftest import World

BARE_TWO = "2\u20e3"  # the keycap without U+FE0F, as some clients and libraries send it


async def test_a_keycap_vote_counts_in_both_forms(world: World, start_bot, tmp_path: Path) -> None:
    """`2⃣` and `2️⃣` are the same vote; a retraction in the bare form retracts; the journal keeps the
    configured spelling."""
    async with start_bot() as app:
        message = await make_round(world)
        mid = int(message["id"])
        round_id = (await app.service.round_for_message(mid)).round_id
        server, ch = world.server, world.imagine
        await server.add_reaction(ch, mid, world.alice, "2️⃣")
        await server.add_reaction(ch, mid, world.bob, BARE_TWO)
        await server.add_reaction(ch, mid, world.bob, "3\u20e3")
        await settle(app, round_id, {2: {world.alice, world.bob}, 3: {world.bob}})
        await server.remove_reaction(ch, mid, world.bob, "3\u20e3")
        await settle(app, round_id, {2: {world.alice, world.bob}})
        events = await app.journal.events("votes")
    assert {e.record.emoji for e in events} == {"2️⃣", "3️⃣"}


async def test_a_skin_tone_counts_when_the_configured_emoji_has_none(world: World, start_bot) -> None:
    """With 👍 configured, a 👍🏽 reaction is a vote for it; ❤ without its selector is ❤️."""
    emoji = ["👍", "❤️", "3️⃣", "4️⃣"]
    async with start_bot({"votes": {"emoji": emoji}}) as app:
        message = await make_round(world)
        mid = int(message["id"])
        round_id = (await app.service.round_for_message(mid)).round_id
        await world.server.add_reaction(world.imagine, mid, world.alice, "👍🏽")
        await world.server.add_reaction(world.imagine, mid, world.bob, "\u2764")
        await settle(app, round_id, {1: {world.alice}, 2: {world.bob}})
