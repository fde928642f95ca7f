"""End to end through the real discord.py client and the loopback server: prompts in, rounds out."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from PIL import Image

from tests.conftest import World

EMOJI = ["1️⃣", "2️⃣", "3️⃣", "4️⃣"]


def decode_pngs(world: World, message: dict[str, Any]) -> list[Image.Image]:
    images = []
    for attachment in message["attachments"]:
        data = world.server.attachment_bytes(attachment["url"])
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        images.append(Image.open(io.BytesIO(data)))
    return images


def bot_messages(world: World, channel: int) -> list[dict[str, Any]]:
    return [m for m in world.server.channel_messages(channel) if int(m["author"]["id"]) == world.server.bot_user_id]


async def test_slash_command_gives_four_pngs_seeds_and_vote_emoji(world: World, start_bot) -> None:
    """/imagine → deferred, progress edits, then four PNGs of the asked size, seeds in text, four emoji."""
    async with start_bot({"generation": {"progress_interval_s": 0.05}}) as app:
        interaction = await world.server.invoke_slash(
            "imagine", {"prompt": "a red fox at dawn", "seed": 1234, "steps": 12, "size": "64x128"},
            user_id=world.alice, channel_id=world.imagine)
        await interaction.wait_for(lambda i: i.original is not None and len(i.original["attachments"]) == 4,
                                   timeout=60)
        message = interaction.original
        assert interaction.responses[0]["type"] == 5  # deferred: acknowledged at once
        images = decode_pngs(world, message)
        assert [im.size for im in images] == [(64, 128)] * 4
        assert "seed `1234`" in message["content"] and "1235" not in message["content"]
        assert "a red fox at dawn" in message["content"] and "12 steps" in message["content"]
        await world.server.wait_for_request(
            lambda r: r.method == "PUT" and EMOJI[3] in r.path and str(message["id"]) in r.path)
        assert set(world.server.reactions(int(message["id"]))) == set(EMOJI)
        edits = [r.json.get("content", "") for r in world.server.requests
                 if r.method == "PATCH" and r.path.endswith("@original") and r.json]
        assert any("step" in text and "/" in text for text in edits), edits
        posted = await app.journal.round_for_message(int(message["id"]))
        assert posted is not None and posted.seeds == (1234, 1235, 1236, 1237)
        assert (posted.width, posted.height, posted.steps, posted.source) == (64, 128, 12, "slash")


async def test_message_in_prompt_channel_and_mention_elsewhere(world: World, start_bot) -> None:
    """A plain message in a prompt channel, and a mention in any channel, both get a round."""
    async with start_bot():
        prompt = await world.server.send_message(world.imagine, world.bob, "a lighthouse in a storm seed=7")
        round_message = await world.server.wait_for_message(
            lambda m: m.get("message_reference", {}).get("message_id") == prompt["id"]
            and len(m["attachments"]) == 4, timeout=60)
        assert [im.size for im in decode_pngs(world, round_message)] == [(64, 64)] * 4
        assert "seed `7`" in round_message["content"]

        mention = await world.server.send_message(
            world.general, world.alice, f"<@{world.server.bot_user_id}> a cabin in snow", mentions_bot=True)
        reply = await world.server.wait_for_message(
            lambda m: m.get("message_reference", {}).get("message_id") == mention["id"]
            and len(m["attachments"]) == 4, timeout=60)
        assert "a cabin in snow" in reply["content"] and "<@" not in reply["content"].split("\n")[0]


async def test_unlisted_channel_bots_and_own_messages_are_ignored(world: World, start_bot) -> None:
    """No reply to a plain message in an unlisted channel, to another bot, or to the bot's own rounds."""
    other_bot = world.server.add_user("otherbot", bot=True)
    async with start_bot() as app:
        await world.server.send_message(world.general, world.alice, "a castle")
        await world.server.send_message(world.imagine, other_bot, "a robot")
        marker = await world.server.send_message(world.imagine, world.alice, "a boat")
        await world.server.wait_for_message(
            lambda m: m.get("message_reference", {}).get("message_id") == marker["id"]
            and len(m["attachments"]) == 4, timeout=60)
        # Any answer the two earlier messages had wrongly started would be running or done by now (they
        # were dispatched first, and alice's castle would have queued before her boat): wait until the
        # bot answers nothing, instead of sleeping and hoping.
        for _ in range(500):
            if not app.bot.answering:
                break
            await asyncio.sleep(0.01)
        assert not app.bot.answering
        assert bot_messages(world, world.general) == []
        replies = bot_messages(world, world.imagine)
        assert [m["message_reference"]["message_id"] for m in replies] == [marker["id"]]


async def test_each_bad_slash_input_gets_its_own_ephemeral_reply(world: World, start_bot) -> None:
    """Bad options are refused privately, with the bad value named, and nothing is generated."""
    cases = [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 501}, "501 characters long"),
        ({"prompt": "a fox", "size": "500"}, "width 500 is not a multiple of 8"),
        ({"prompt": "a fox", "size": "1024"}, "out of range: use 64 to 256"),
        ({"prompt": "a fox", "steps": 0}, "steps=0 is out of range"),
        ({"prompt": "a fox", "guidance": 99.0}, "guidance=99 is out of range"),
    ]
    async with start_bot() as app:
        for options, expected in cases:
            interaction = await world.server.invoke_slash("imagine", options, user_id=world.alice,
                                                          channel_id=world.imagine)
            await interaction.wait_for(lambda i: bool(i.responses), timeout=10)
            response = interaction.responses[0]
            assert response["type"] == 4, response
            assert response["data"]["flags"] & 64, "error replies are ephemeral"
            assert expected in response["data"]["content"], (expected, response)
        stats = await app.journal.stats()
        assert stats.by_kind.get("rounds", 0) == 0
        assert stats.by_kind.get("errors", 0) == len(cases)


async def test_bad_message_option_gets_a_reply(world: World, start_bot) -> None:
    """A message with an unknown option is answered with a reply naming it."""
    async with start_bot():
        sent = await world.server.send_message(world.imagine, world.alice, "a fox colour=red")
        reply = await world.server.wait_for_message(
            lambda m: m.get("message_reference", {}).get("message_id") == sent["id"], timeout=20)
        assert "Unknown option `colour=`" in reply["content"]
        assert reply["attachments"] == []


async def test_an_unexpected_failure_still_answers_the_acknowledgement(world: World, start_bot) -> None:
    """A failure that is no domain error (here: the image folder cannot be written) turns the
    acknowledgement into a short apology instead of leaving it at "generating"; it is logged."""
    async with start_bot() as app:
        def disk_full(*_: Any) -> tuple[str, ...]:
            raise OSError(28, "No space left on device")

        app.service.images.save_round = disk_full  # type: ignore[method-assign]
        interaction = await world.server.invoke_slash("imagine", {"prompt": "a kite"}, user_id=world.alice,
                                                      channel_id=world.imagine)
        await interaction.wait_for(lambda i: bool(i.original and "Something went wrong" in i.original["content"]),
                                   timeout=30)
        assert interaction.original["attachments"] == [] and not interaction.original.get("components")
        assert (await app.journal.stats()).by_kind.get("errors") == 1


async def test_echoed_prompts_ping_nobody(world: World, start_bot) -> None:
    """A prompt naming users or @everyone is echoed (acknowledgement, progress, round) and pings nobody."""
    carol = world.server.add_user("carol")
    async with start_bot():
        sent = await world.server.send_message(world.imagine, world.alice,
                                               f"a portrait of <@{world.bob}> and <@!{carol}> @everyone")
        echoed = await world.server.wait_for_message(
            lambda m: m.get("message_reference", {}).get("message_id") == sent["id"]
            and len(m["attachments"]) == 4, timeout=60)
        slash = await world.server.invoke_slash("imagine", {"prompt": f"<@{world.bob}> as a knight"},
                                                user_id=world.alice, channel_id=world.imagine)
        await slash.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)
    assert f"<@{world.bob}>" in echoed["content"] and f"<@{world.bob}>" in slash.original["content"]
    pinged = [(m["content"][:40], m["mentions"], m["mention_everyone"])
              for m in bot_messages(world, world.imagine) if m["mentions"] or m["mention_everyone"]]
    assert pinged == []
