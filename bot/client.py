"""The discord.py client: intents, cog loading, command sync, the app-command error handler."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.config import Config
from bot.dashboard import Dashboard
from bot.service import RefineryService

log = logging.getLogger(__name__)

COGS = ("cogs.imagine", "cogs.votes", "cogs.refine", "cogs.export", "cogs.queue", "cogs.moderation",
        "cogs.models", "cogs.dashboard", "cogs.vote_reconcile")
DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg/"


def point_discord_at(api_base: str, gateway_url: str) -> None:
    """Send REST calls and the gateway connection somewhere else (a REST proxy, or the dev server).

    discord.py builds every REST URL, webhook follow-ups included, from `Route.BASE`, and connects
    to `DiscordWebSocket.DEFAULT_GATEWAY`; both are process-wide class attributes.
    """
    discord.http.Route.BASE = api_base.rstrip("/") if api_base else DISCORD_API_BASE
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url or DISCORD_GATEWAY)


class RefineryBot(commands.Bot):
    """Holds the service and config for the cogs; everything else lives in the cogs and the service."""

    def __init__(self, config: Config, service: RefineryService) -> None:
        # Refinery has no voice features: discord.py's "PyNaCl / davey is not installed, voice will NOT
        # be supported" warnings (given once, at the first client) are about nothing it uses.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.default()
        intents.message_content = True  # without it Discord blanks prompts sent as plain messages
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            guild_ready_timeout=config.discord.guild_ready_timeout_s,
            # Echoed user text (prompts, instructions) must never ping anyone: nothing is parsed as a
            # mention unless a send names the one user it pings (render.pinging).
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.config = config
        self.service = service
        # Set by running_app when [dashboard] is enabled; cogs/dashboard.py hands out its login links.
        self.dashboard: Dashboard | None = None
        # Tasks now answering a user (run_and_post): shutdown lets them post their last word first.
        self.answering: set[asyncio.Task[Any]] = set()

    async def setup_hook(self) -> None:
        for name in COGS:
            await self.load_extension(name)
        self.tree.on_error = self._on_app_command_error
        if self.config.discord.sync_commands:
            synced = await self.tree.sync()
            log.info("synced %d application commands", len(synced))

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: prompts in messages are handled by the imagine cog's listener."""

    async def on_ready(self) -> None:
        log.info("connected as %s (%s) to %d guild(s)", self.user, getattr(self.user, "id", "?"),
                 len(self.guilds))

    async def _on_app_command_error(self, interaction: discord.Interaction,
                                    error: app_commands.AppCommandError) -> None:
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        text = await self.service.report_error(cause, user_id=interaction.user.id,
                                               channel_id=interaction.channel_id or 0)
        await send_ephemeral(interaction, text)


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer an interaction privately, whether or not it was already acknowledged."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.exception("could not send an error reply for interaction %s", interaction.id)
