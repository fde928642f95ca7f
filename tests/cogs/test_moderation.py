"""Moderation end to end: banned phrases, removing rounds, /modlog and the reaction rate limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.devserver import MANAGE_GUILD
from storage.records import ModerationAction
from tests.cogs.test_export import EPHEMERAL, make_round, moderation_count, slash, until
from tests.conftest import World

REFUSAL = "Your prompt was refused by this server's rules."
BANNED = {"moderation": {"banned_words": ["dragon"]}}


async def kind_count(app: Any, kind: str) -> int:
    return (await app.journal.stats()).by_kind.get(kind, 0)


async def refuse_events(app: Any) -> list[ModerationAction]:
    return [e.record for e in await app.journal.events("moderation") if e.record.action == "refuse"]


async def answer_to(world: World, sent: dict[str, Any]) -> dict[str, Any]:
    return await world.server.wait_for_message(
        lambda m: m.get("message_reference", {}).get("message_id") == sent["id"]
        and ("⚠️" in m["content"] or len(m["attachments"]) == 4), timeout=30)


async def test_banned_prompts_are_refused_on_every_path(world: World, start_bot) -> None:
    """Slash prompt, negative prompt, plain message and reply with a banned phrase: refused, journaled, no image."""
    async with start_bot(BANNED) as app:
        msg_id, _ = await make_round(world, app, world.alice, "a quiet lake")
        rounds = await kind_count(app, "rounds")
        for options in ({"prompt": "a red DR4GON"}, {"prompt": "a castle", "negative": "d r a g o n"}):
            refused = await slash(world, "imagine", options, world.bob)
            data = refused.responses[0]["data"]
            assert data["flags"] & EPHEMERAL and REFUSAL in data["content"] and "dragon" not in data["content"].lower()
        sent = await world.server.send_message(world.imagine, world.bob, "a dràgon on a hill")
        assert REFUSAL in (await answer_to(world, sent))["content"]
        reply = await world.server.send_message(world.imagine, world.bob, "add a dragon", reply_to=msg_id)
        assert REFUSAL in (await answer_to(world, reply))["content"]
        assert await kind_count(app, "rounds") == rounds  # nothing was generated
        refusals = await refuse_events(app)
        assert [(r.moderator_id, r.target_user_id, r.reason) for r in refusals] == [(0, world.bob, "banned phrase")] * 4


async def test_runtime_banned_phrase_survives_a_restart(world: World, start_bot, tmp_path: Path) -> None:
    """/banned add by a moderator is journaled and still refuses prompts after the bot restarts."""
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    data_dir = tmp_path / "data"
    async with start_bot(data_dir=data_dir) as app:
        refused = await slash(world, "banned add", {"phrase": "unicorn"}, world.bob)
        assert "Only moderators can manage banned words" in refused.responses[0]["data"]["content"]
        added = await slash(world, "banned add", {"phrase": "unicorn"}, owner)
        assert added.responses[0]["data"]["flags"] & EPHEMERAL and "Added" in added.responses[0]["data"]["content"]
        await slash(world, "banned add", {"phrase": "kraken"}, owner)
        await slash(world, "banned remove", {"phrase": "kraken"}, owner)
    async with start_bot(data_dir=data_dir) as app:
        listed = await slash(world, "banned list", {}, owner)
        assert "`unicorn`" in listed.responses[0]["data"]["content"]
        assert "kraken" not in listed.responses[0]["data"]["content"]
        refused = await slash(world, "imagine", {"prompt": "a u-n-i-c-o-r-n"}, world.alice)
        assert REFUSAL in refused.responses[0]["data"]["content"]
        assert len(await refuse_events(app)) == 1 and await kind_count(app, "rounds") == 0


async def test_remove_emoji_by_a_moderator_deletes_the_round(world: World, start_bot) -> None:
    """🚫 from a normal user does nothing; from a moderator it deletes the message, journals and tells the requester."""
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        msg_id, round_id = await make_round(world, app, world.alice, "a red fox")
        await world.server.add_reaction(world.imagine, msg_id, world.bob, "🚫")
        await world.server.add_reaction(world.imagine, msg_id, owner, "🚫")
        told = await world.server.wait_for_message(lambda m: f"<@{world.alice}>" in m["content"]
                                                   and round_id in m["content"])
        assert [u["id"] for u in told["mentions"]] == [str(world.alice)], "the requester is pinged"
        assert msg_id not in {int(m["id"]) for m in world.server.channel_messages(world.imagine)}
        (removed,) = [e.record for e in await app.journal.events("moderation")]
        assert (removed.action, removed.moderator_id, removed.round_id) == ("remove", owner, round_id)


async def test_remove_command_and_modlog(world: World, start_bot) -> None:
    """/remove and /modlog are refused to normal users; a moderator removes by round id and reads the log."""
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        msg_id, round_id = await make_round(world, app, world.alice, "a red fox")
        refused = await slash(world, "remove", {"round": round_id}, world.bob)
        assert refused.responses[0]["data"]["flags"] & EPHEMERAL
        assert "Only moderators can remove rounds" in refused.responses[0]["data"]["content"]
        assert await moderation_count(app) == 0
        done = await slash(world, "remove", {"round": round_id}, owner)
        assert f"Round `{round_id}` is removed" in done.responses[0]["data"]["content"]
        await until(lambda: _gone(world, msg_id))
        log = await slash(world, "modlog", {}, owner)
        text = log.responses[0]["data"]["content"]
        assert log.responses[0]["data"]["flags"] & EPHEMERAL
        assert f"**remove** by <@{owner}> on <@{world.alice}> round `{round_id}` — /remove" in text
        denied = await slash(world, "modlog", {}, world.bob)
        assert "Only moderators can read the moderation log" in denied.responses[0]["data"]["content"]


async def _gone(world: World, message_id: int) -> bool:
    return message_id not in {int(m["id"]) for m in world.server.channel_messages(world.imagine)}


async def test_a_reaction_flood_journals_only_up_to_the_limit(world: World, start_bot) -> None:
    """Beyond events_per_minute a user's new votes are dropped and counted, never journaled; removals
    are never dropped (a removal of a vote that was dropped changes nothing)."""
    async with start_bot({"moderation": {"events_per_minute": 5}}) as app:
        msg_id, _ = await make_round(world, app, world.alice, "a red fox")
        votes = await kind_count(app, "votes")
        for _ in range(10):
            await world.server.add_reaction(world.imagine, msg_id, world.bob, "1️⃣")
            await world.server.remove_reaction(world.imagine, msg_id, world.bob, "1️⃣")

        async def settled() -> bool:
            return app.service.dropped_events == 5
        await until(settled)
        await until(lambda: _settled_votes(app, votes + 10))
        await world.server.add_reaction(world.imagine, msg_id, world.alice, "2️⃣")  # others are not limited
        await until(lambda: _voted(app, msg_id, world.alice))


async def _settled_votes(app: Any, expected: int) -> bool:
    return await kind_count(app, "votes") == expected  # 5 adds and their 5 retractions


async def _voted(app: Any, msg_id: int, user: int) -> bool:
    found = await app.service.round_for_message(msg_id)
    return await app.journal.has_vote(found.round_id, 2, user)
