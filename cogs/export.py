"""Datasets: `/export`, and `/forget-me` (a user leaving every later export).

Receives discord.py events and defers every decision to `bot.service` (who may do what is decided
in `bot.permissions`); this file turns a Discord member into a `Member`, calls the service, and
renders the answer. Every answer is ephemeral: moderation is nobody else's business.
"""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import RefineryBot
from bot.discord_limits import fit
from bot.moderation import ATTACH_LIMIT_BYTES, ExportSummary
from bot.permissions import Action
from cogs.members import member_of
from storage.exports import FORMATS


def export_text(summary: ExportSummary) -> str:
    counts = " · ".join(f"{n} {fmt}" for fmt, n in summary.counts.items())
    rounds = f"{summary.rounds} round" + ("" if summary.rounds == 1 else "s")
    # The name finds it (exports/<name> in the bot's data folder, the dashboard's Exports page); the
    # server's absolute path is nobody's business in a Discord answer.
    lines = [f"📦 Export **{summary.name}**: {counts} from {rounds}."]
    if summary.left_out:
        reasons = "; ".join(f"{reason}: {n}" for reason, n in list(summary.left_out.items())[:6])
        lines.append(f"Not used: {reasons[:400]}")
    if summary.oxen_state == "committed":
        lines.append(f"Oxen: the folder is its own repository (only this export), commit `{summary.commit_id}`")
    else:
        lines.append(f"Oxen: not committed: {(summary.error or '')[:300]}")
    if summary.archive is None:
        lines.append(f"The zipped export is over {ATTACH_LIMIT_BYTES / 1e6:.0f} MB: take it from "
                     f"`exports/{summary.name}` in the bot's data folder, or push its Oxen repository.")
    return fit("\n".join(lines))


class Export(commands.Cog):
    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot
        self.service = bot.service

    @app_commands.command(name="export", description="Moderators: export the votes as training-ready datasets")
    @app_commands.describe(
        formats=f"Comma-separated: {', '.join(FORMATS)} (default: all)",
        since="First day, YYYY-MM-DD (UTC)",
        until="Last day, YYYY-MM-DD (UTC, included)",
        channel="Only rounds made in this channel",
        min_votes="Only rounds with at least this many voters",
        include_flagged="Keep flagged rounds (default: leave them out)",
        name="Folder and Oxen repository name (default: export-<UTC time>)",
        include_edit_rounds="Also instruct/inpaint rounds in pairs and kto (their caption is the reply)",
    )
    async def export(self, interaction: discord.Interaction, formats: str | None = None, since: str | None = None,
                     until: str | None = None, channel: app_commands.AppCommandChannel | None = None,
                     min_votes: app_commands.Range[int, 0, 1_000_000] | None = None,
                     include_flagged: bool = False, name: str | None = None,
                     include_edit_rounds: bool = False) -> None:
        member = member_of(interaction.user, interaction.permissions)
        self.service.require(Action.EXPORT, member)  # NotAllowed → the tree's handler, ephemeral, nothing written
        await interaction.response.defer(ephemeral=True, thinking=True)
        summary = await self.service.moderation.export(
            member=member, formats=formats, since=since, until=until,
            channel_id=channel.id if channel is not None else None, min_votes=min_votes,
            include_flagged=include_flagged, name=name, include_edit_rounds=include_edit_rounds)
        files: list[discord.File] = []
        if summary.archive is not None:
            files.append(discord.File(io.BytesIO(summary.archive), filename=f"{summary.name}.zip"))
        await interaction.followup.send(export_text(summary), files=files, ephemeral=True)

    @app_commands.command(name="forget-me", description="Leave me out of every dataset export from now on")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        await self.service.moderation.forget_me(interaction.user.id)
        await interaction.response.send_message(
            "Done: every dataset export from now on leaves out your rounds and your votes. Exports made "
            "before now are not changed.", ephemeral=True)


async def setup(bot: RefineryBot) -> None:
    await bot.add_cog(Export(bot))
