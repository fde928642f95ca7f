"""The loopback Discord server, driven by a real, minimal discord.py bot running in-process."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot.devserver import DiscordDevServer

PNG_SIZES = [(8, 8), (16, 4)]


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return buffer.getvalue()


class VoteView(discord.ui.View):
    """A persistent view: one button with a fixed custom_id."""

    def __init__(self, clicks: list[int]) -> None:
        super().__init__(timeout=None)
        self.clicks = clicks

    @discord.ui.button(label="Up", custom_id="vote:up")
    async def up(self, interaction: discord.Interaction, button: discord.ui.Button[VoteView]) -> None:
        self.clicks.append(interaction.user.id)
        await interaction.response.send_message("counted", ephemeral=True)


class ProbeBot(commands.Bot):
    """Just enough bot to exercise each server feature, recording what reached it."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True  # makes discord.py chunk the guild at start-up (gateway op 8)
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        self.reaction_events: list[tuple[str, int, str]] = []
        self.clicks: list[int] = []
        self.changed = asyncio.Event()

        @app_commands.command(description="Draw something")
        async def imagine(
            interaction: discord.Interaction, prompt: str, steps: int = 4, image: discord.Attachment | None = None
        ) -> None:
            await interaction.response.defer(thinking=True)
            size = len(await image.read()) if image is not None else 0
            await interaction.followup.send(f"done: {prompt} x{steps} ({size} bytes)", view=VoteView(self.clicks))

        self.tree.add_command(imagine)

    async def setup_hook(self) -> None:
        self.add_view(VoteView(self.clicks))
        await self.tree.sync()

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot:
            return
        if message.content == "draw":
            files = [discord.File(io.BytesIO(png(w, h)), f"candidate {i}.png") for i, (w, h) in enumerate(PNG_SIZES)]
            reply = await message.reply("two candidates", files=files)
            for emoji in ("1️⃣", "2️⃣"):
                await reply.add_reaction(emoji)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self._record("add", payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self._record("remove", payload)

    def _record(self, kind: str, payload: discord.RawReactionActionEvent) -> None:
        if payload.user_id != self.user.id:  # the bot's own reactions come back too
            self.reaction_events.append((kind, payload.user_id, str(payload.emoji)))
            self.changed.set()


@pytest.fixture
async def server() -> AsyncIterator[DiscordDevServer]:
    """A started server with discord.py pointed at it (restored afterwards)."""
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordDevServer() as dev:
        discord.http.Route.BASE = dev.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(dev.gateway_url)
        try:
            yield dev
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


async def start_bot(server: DiscordDevServer) -> tuple[ProbeBot, asyncio.Task[None]]:
    bot = ProbeBot()
    task = asyncio.create_task(bot.start(server.bot_token))
    await asyncio.wait_for(bot.wait_until_ready(), 5)
    return bot, task


async def stop_bot(bot: ProbeBot, task: asyncio.Task[None]) -> None:
    await bot.close()
    await task


@pytest.fixture
async def probe(server: DiscordDevServer) -> AsyncIterator[ProbeBot]:
    bot, task = await start_bot(server)
    yield bot
    await stop_bot(bot, task)


async def until(condition: object, bot: ProbeBot, timeout: float = 2) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            bot.changed.clear()
            await bot.changed.wait()


async def test_reply_with_png_files_and_reactions(server: DiscordDevServer, probe: ProbeBot) -> None:
    """A message in gets a reply with two decodable PNGs, and the bot's reactions are recorded."""
    channel, alice = server.add_channel("art"), server.add_user("alice")
    sent = await server.send_message(channel, alice, "draw")
    reply = await server.wait_for_message(lambda m: m["author"]["id"] == str(server.bot_user_id), timeout=3)
    assert reply["content"] == "two candidates"
    assert reply["message_reference"]["message_id"] == sent["id"]
    sizes = []
    for attachment in reply["attachments"]:
        assert attachment["content_type"] == "image/png"
        assert attachment["filename"].endswith(".png") and " " not in attachment["filename"]
        sizes.append(Image.open(io.BytesIO(server.attachment_bytes(attachment["url"]))).size)
        assert (attachment["width"], attachment["height"]) == sizes[-1]
    assert sizes == PNG_SIZES
    async with aiohttp.ClientSession() as http, http.get(reply["attachments"][0]["url"]) as response:
        assert await response.read() == server.attachment_bytes(reply["attachments"][0]["url"])
    await server.wait_for_request(lambda r: r.method == "PUT" and r.path.endswith("/2️⃣/@me"), timeout=3)
    assert server.reactions(int(reply["id"])) == {"1️⃣": {server.bot_user_id}, "2️⃣": {server.bot_user_id}}
    assert [m["id"] for m in server.channel_messages(channel)] == [sent["id"], reply["id"]]


async def test_user_reactions_reach_raw_events(server: DiscordDevServer, probe: ProbeBot) -> None:
    """User reaction add/remove arrive as on_raw_reaction_add/remove."""
    channel, bob = server.add_channel("art"), server.add_user("bob")
    message = await server.send_message(channel, bob, "hello")
    await server.add_reaction(channel, int(message["id"]), bob, "👍")
    await server.remove_reaction(channel, int(message["id"]), bob, "👍")
    await until(lambda: len(probe.reaction_events) == 2, probe)
    assert probe.reaction_events == [("add", bob, "👍"), ("remove", bob, "👍")]
    assert server.reactions(int(message["id"])) == {}


async def test_slash_command_defer_then_followup(server: DiscordDevServer, probe: ProbeBot) -> None:
    """A synced slash command with an attachment option is deferred, then completed by its follow-up."""
    channel, carol = server.add_channel("art"), server.add_user("carol")
    assert [c["name"] for c in server.synced_commands] == ["imagine"]
    upload = ("ref.png", png(2, 2), "image/png")
    interaction = await server.invoke_slash(
        "imagine", {"prompt": "a cat", "steps": 7}, user_id=carol, channel_id=channel, attachments={"image": upload}
    )
    await interaction.wait_for(lambda i: bool(i.followups), timeout=3)
    assert [r["type"] for r in interaction.responses] == [5]
    assert interaction.followups[0]["content"] == f"done: a cat x7 ({len(upload[1])} bytes)"
    assert interaction.original is not None and interaction.original["id"] == interaction.followups[0]["id"]
    assert interaction.original["flags"] & 128 == 0  # no longer "thinking"
    assert interaction.original["components"][0]["components"][0]["custom_id"] == "vote:up"


async def test_button_on_persistent_view(server: DiscordDevServer, probe: ProbeBot) -> None:
    """A click on a persistent view's button reaches its callback, which answers ephemerally."""
    channel, dave = server.add_channel("art"), server.add_user("dave")
    command = await server.invoke_slash("imagine", {"prompt": "x"}, user_id=dave, channel_id=channel)
    await command.wait_for(lambda i: bool(i.followups), timeout=3)
    click = await server.click_button(int(command.followups[0]["id"]), "vote:up", user_id=dave)
    await click.wait_for(lambda i: i.original is not None, timeout=3)
    assert probe.clicks == [dave]
    assert click.responses[0]["type"] == 4
    assert click.original is not None and click.original["flags"] & 64  # ephemeral kept


async def test_restart_and_resume_keep_state(server: DiscordDevServer) -> None:
    """A resumed connection and a fresh bot instance both work; messages and reactions persist."""
    channel, erin = server.add_channel("art"), server.add_user("erin")
    bot, task = await start_bot(server)
    try:
        resumed = asyncio.Event()

        async def on_resumed() -> None:
            resumed.set()

        bot.add_listener(on_resumed)
        await server.disconnect_bot(4000)
        await asyncio.wait_for(resumed.wait(), 3)
        await server.send_message(channel, erin, "draw")
        reply = await server.wait_for_message(lambda m: m["author"]["bot"], timeout=3)
        await server.wait_for_request(lambda r: r.path.endswith("/2️⃣/@me"), timeout=3)
    finally:
        await stop_bot(bot, task)

    bot, task = await start_bot(server)
    try:
        fetched = await bot.get_channel(channel).fetch_message(int(reply["id"]))  # type: ignore[union-attr]
        assert len(fetched.attachments) == 2
        await server.add_reaction(channel, int(reply["id"]), erin, "1️⃣")
        await until(lambda: bot.reaction_events == [("add", erin, "1️⃣")], bot)
        assert erin in server.reactions(int(reply["id"]))["1️⃣"]
    finally:
        await stop_bot(bot, task)


async def test_reaction_listing_pages_by_user_id(server: DiscordDevServer, probe: ProbeBot) -> None:
    """GET …/reactions/{emoji} pages as Discord does (by user id, `limit` above `after`), so
    discord.py's `Reaction.users()` lists all 130 reactors in two requests; a bad limit is a 400."""
    channel = server.add_channel("votes")
    users = [server.add_user(f"voter{i}") for i in range(130)]
    message = await server.send_message(channel, users[0], "vote here")
    mid = int(message["id"])
    for user in users:
        await server.add_reaction(channel, mid, user, "1️⃣")
    server.requests.clear()
    fetched = await probe.get_partial_messageable(channel).fetch_message(mid)
    [reaction] = fetched.reactions
    assert (reaction.emoji, reaction.count, reaction.me) == ("1️⃣", 130, False)
    assert sorted([user.id async for user in reaction.users()]) == sorted(users)
    pages = [(r.query.get("limit"), r.query.get("after")) for r in server.requests if "/reactions/" in r.path]
    assert pages == [("100", None), ("30", str(sorted(users)[99]))]
    assert await probe.http.get_reaction_users(channel, mid, "1️⃣", 100, after=max(users)) == []
    with pytest.raises(discord.HTTPException) as bad:
        await probe.http.get_reaction_users(channel, mid, "1️⃣", 101)
    assert bad.value.status == 400


async def test_unknown_route_and_wrong_token(server: DiscordDevServer, probe: ProbeBot) -> None:
    """Unknown routes answer 404 and are recorded; a wrong token cannot log in."""
    with pytest.raises(discord.NotFound):
        await probe.http.request(discord.http.Route("GET", "/nowhere/{x}", x=1))
    assert [(r.method, r.path, r.status) for r in server.unknown_routes] == [("GET", "/nowhere/1", 404)]
    intruder = ProbeBot()
    with pytest.raises(discord.LoginFailure):
        await intruder.login("wrong-token")
    await intruder.close()
