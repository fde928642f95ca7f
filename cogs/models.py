"""Serving what was learned: `/model list|use|off` and `/arena start|stop|results`.

Receives discord.py events and defers every decision to the service's adapter desk
(`bot.adapters`; who may do what is `bot.permissions`). Moderator answers are ephemeral; `/arena
results` is for everyone and public in the channel.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters import AdapterInfo, ArenaResults
from bot.client import RefineryBot
from bot.discord_limits import fit
from cogs.members import member_of


def adapter_line(info: AdapterInfo, active: str | None) -> str:
    trained = (f"{info.method or '?'}, {info.steps or '?'} steps on {info.train_examples or '?'} examples"
               if info.method else "no training.json")
    accuracy = (f", held-out accuracy {info.held_out_accuracy_start:.0%} → {info.held_out_accuracy:.0%}"
                if info.held_out_accuracy is not None and info.held_out_accuracy_start is not None else "")
    mark = " ← in use" if active == info.name else ""
    return f"`{info.name}` (sha256 {info.sha256[:12]}…): {trained}{accuracy}{mark}"


def results_text(results: ArenaResults, reveal_after_s: float) -> str:
    if not results.reports:
        return "No arena rounds yet. Moderators start one with `/arena start`."
    lines = ["🥊 **Arena results** (blinded A/B rounds: two base and two adapter candidates each; "
             "the round is the unit of evidence, as its voters all judge the same images)"]
    for report in results.reports:
        lines += report.lines()
    if results.revealed:
        shown = ", ".join(f"`{rid}` {arms}" for rid, _, arms in results.revealed[-10:])
        lines.append(f"Assignments (a = adapter, b = base, by position) of rounds older than "
                     f"{reveal_after_s / 3600:g} h: {shown}")
    if results.hidden:
        lines.append(f"{results.hidden} newer arena round(s) stay blind until they are "
                     f"{reveal_after_s / 3600:g} h old.")
    return fit("\n".join(lines))


class Models(commands.Cog):
    model = app_commands.Group(name="model", description="The trained adapter the bot generates with")
    arena = app_commands.Group(name="arena", description="Blinded A/B rounds: is the adapter preferred?")

    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot
        self.desk = bot.service.adapters

    @model.command(name="list", description="Trained adapters and their training summary")
    async def model_list(self, interaction: discord.Interaction) -> None:
        adapters = await self.desk.adapters()
        active = self.desk.active.name if self.desk.active else None
        lines = [adapter_line(info, active) for info in adapters] or [
            "No trained adapters yet: a moderator runs `refinery train --name NAME` on the bot's machine."]
        head = f"In use: `{self.desk.active.label}`" if self.desk.active else "In use: the base model"
        await interaction.response.send_message(fit("\n".join([head, *lines])), ephemeral=True)

    @model.command(name="use", description="Moderators: generate with this adapter from the next job on")
    @app_commands.describe(name="The adapter's name (see /model list)",
                           weight="How strongly it applies (0-2, 1 = as trained)")
    async def model_use(self, interaction: discord.Interaction, name: str,
                        weight: app_commands.Range[float, 0.0, 2.0] = 1.0) -> None:
        ref = await self.desk.use(member_of(interaction.user, interaction.permissions), name, weight)
        await interaction.response.send_message(
            f"From the next job on, rounds use `{ref.label}` at weight {ref.weight:g}.", ephemeral=True)

    @model.command(name="off", description="Moderators: back to the base model from the next job on")
    async def model_off(self, interaction: discord.Interaction) -> None:
        was = await self.desk.off(member_of(interaction.user, interaction.permissions))
        text = f"`{was.label}` is off: rounds use the base model." if was else "Rounds already use the base model."
        await interaction.response.send_message(text, ephemeral=True)

    @arena.command(name="start", description="Moderators: turn a share of rounds into blind base-vs-adapter tests")
    @app_commands.describe(name="The adapter under test", fraction="Share of text-to-image rounds (0-1, default 0.5)")
    async def arena_start(self, interaction: discord.Interaction, name: str,
                          fraction: app_commands.Range[float, 0.0, 1.0] = 0.5) -> None:
        arena = await self.desk.arena_start(member_of(interaction.user, interaction.permissions), name, fraction)
        await interaction.response.send_message(
            f"🥊 Arena on: {arena.fraction:.0%} of new text-to-image rounds show two candidates from "
            f"`{arena.adapter.label}` and two from the base model, shuffled. Votes on them are comparisons: "
            "`/arena results`.", ephemeral=True)

    @arena.command(name="stop", description="Moderators: stop making arena rounds")
    async def arena_stop(self, interaction: discord.Interaction) -> None:
        was = await self.desk.arena_stop(member_of(interaction.user, interaction.permissions))
        text = f"Arena off (was `{was.adapter.label}`)." if was else "The arena was not running."
        await interaction.response.send_message(text, ephemeral=True)

    @arena.command(name="results", description="Is the adapter preferred? Rounds won, interval, rounds still needed")
    @app_commands.describe(name="Only this adapter (default: all)")
    async def arena_results(self, interaction: discord.Interaction, name: str | None = None) -> None:
        await interaction.response.defer(thinking=True)
        results = await self.desk.results(name)
        await interaction.followup.send(results_text(results, self.bot.config.arena.reveal_after_s),
                                        allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: RefineryBot) -> None:
    await bot.add_cog(Models(bot))
