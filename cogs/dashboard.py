"""`/dashboard`: a moderator's one-time login link to the web dashboard, and the dashboard's Discord side.

Receives discord.py events and defers the rest to `bot.dashboard`: the link is made (and the moderator
permission checked) there. This file also plugs in what the web pages need from Discord: the member as
Discord sees them now (the permission is re-checked on every request), taking a removed round's message
down as /remove does, and the gateway's state.
"""

from __future__ import annotations

import logging
import math

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import RefineryBot
from bot.dashboard import LOGIN_TTL_S
from bot.permissions import Member
from cogs.members import member_of
from cogs.moderation import take_down
from storage.records import Round

log = logging.getLogger(__name__)


class DiscordSide:
    """`bot.dashboard.DiscordSide` over the running bot."""

    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot

    async def member(self, guild_id: int, user_id: int) -> Member | None:
        guild = self.bot.get_guild(guild_id)
        if guild is None:
            return None
        try:
            # Asked each time (the dashboard caches it for permission_cache_s): without the privileged
            # members intent the gateway's cache does not follow role changes.
            found: discord.Member | None = await guild.fetch_member(user_id)
        except discord.NotFound:
            return None  # left the server
        except discord.HTTPException:
            log.warning("dashboard: could not look up user %s; using the cached member", user_id)
            found = guild.get_member(user_id)
        return None if found is None else member_of(found)

    async def take_down(self, found: Round, message_id: int | None) -> None:
        await take_down(self.bot, found, message_id, found.channel_id)

    def connected(self) -> bool:
        return self.bot.is_ready() and not self.bot.is_closed()

    def latency_s(self) -> float | None:
        latency = self.bot.latency
        return latency if math.isfinite(latency) else None


class Dashboard(commands.Cog):
    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        if self.bot.dashboard is not None:
            self.bot.dashboard.discord = DiscordSide(self.bot)

    async def cog_unload(self) -> None:
        if self.bot.dashboard is not None:
            self.bot.dashboard.discord = None

    @app_commands.command(name="dashboard", description="Moderators: a one-time login link to the web dashboard")
    async def dashboard(self, interaction: discord.Interaction) -> None:
        web = self.bot.dashboard
        if web is None:
            await interaction.response.send_message("The web dashboard is turned off here "
                                                    "(`[dashboard] enabled = false`).", ephemeral=True)
            return
        if interaction.guild_id is None:
            await interaction.response.send_message("Use /dashboard in the server you moderate.", ephemeral=True)
            return
        # NotAllowed for a plain member → the tree's error handler answers, ephemeral, and no link exists.
        link = web.login_link(member_of(interaction.user, interaction.permissions), interaction.guild_id)
        await interaction.response.send_message(
            f"🔑 Your dashboard login link. It works once, for {LOGIN_TTL_S / 60:.0f} minutes, and logs in whoever "
            f"opens it: do not share it.\n{link}", ephemeral=True, suppress_embeds=True)
        log.info("dashboard login link given to user %s", interaction.user.id)  # never the link itself


async def setup(bot: RefineryBot) -> None:
    await bot.add_cog(Dashboard(bot))
