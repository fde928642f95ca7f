"""Prompts in, rounds out: `/imagine` and plain messages in prompt channels or mentioning the bot.

Receives discord.py events and defers every decision to `bot.service`; this file only parses the
event, keeps the user's acknowledgement up to date, and renders the finished round.
"""

from __future__ import annotations

import logging
import re

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.client import RefineryBot
from bot.errors import RefineryError
from bot.options import PromptInput, parse_message
from bot.tickets import Origin
from cogs.rounds import defer_with_ack, is_nsfw, run_and_post

log = logging.getLogger(__name__)


class Imagine(commands.Cog):
    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot
        self.service = bot.service

    @app_commands.command(name="imagine", description="Generate four images from a prompt")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to avoid (negative prompt)",
        seed="Seed of the first candidate (the others use the next seeds)",
        steps="Denoising steps",
        guidance="How closely to follow the prompt (classifier-free guidance)",
        size="512 or WIDTHxHEIGHT, multiples of 8",
    )
    async def imagine(self, interaction: discord.Interaction, prompt: str, negative: str | None = None,
                      seed: int | None = None, steps: int | None = None, guidance: float | None = None,
                      size: str | None = None) -> None:
        given = PromptInput(prompt=prompt, negative=negative or "", seed=seed, steps=steps,
                            guidance=guidance, size=size)
        # InvalidInput / Refused → the tree's handler, ephemeral; nothing is queued
        request = await self.service.checked_request(given, interaction.user.id)
        ack_id = await defer_with_ack(interaction)  # lets ❌ cancel, and a restarted bot answer there
        origin = Origin(user_id=interaction.user.id, channel_id=interaction.channel_id or 0,
                        guild_id=interaction.guild_id, source="slash", nsfw_channel=is_nsfw(interaction.channel))

        await run_and_post(self.bot, origin, request.prompt,
                           lambda show: self.service.imagine(request, origin, show, ack_message_id=ack_id),
                           interaction.edit_original_response)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or self.bot.user is None:
            return
        prompt = self._prompt_in(message)
        if prompt is None:
            return
        reference = message.reference.message_id if message.reference is not None else None
        if reference is not None and await self.service.is_round_message(reference):
            return  # a reply to a round is a refinement, not a new prompt
        origin = Origin(user_id=message.author.id, channel_id=message.channel.id,
                        guild_id=message.guild.id if message.guild else None, source="message",
                        nsfw_channel=is_nsfw(message.channel))
        try:
            request = await self.service.checked_request(parse_message(prompt), origin.user_id)
        except RefineryError as exc:
            text = await self.service.report_error(exc, user_id=origin.user_id, channel_id=origin.channel_id)
            await message.reply(text, mention_author=False)
            return
        ack = await message.reply(render.prompt_ack(prompt), mention_author=False)
        await run_and_post(self.bot, origin, request.prompt,
                           lambda show: self.service.imagine(request, origin, show, ack_message_id=ack.id), ack.edit)

    def _prompt_in(self, message: discord.Message) -> str | None:
        """The prompt text if this message asks for images, else None."""
        assert self.bot.user is not None
        mention = re.compile(rf"<@!?{self.bot.user.id}>")
        mentioned = self.bot.user in message.mentions and self.bot.config.discord.respond_to_mentions
        channel = message.channel
        listed = self.bot.config.discord.prompt_channels
        in_prompt_channel = str(channel.id) in listed or getattr(channel, "name", None) in listed
        if not (mentioned or in_prompt_channel):
            return None
        return mention.sub(" ", message.content).strip()


async def setup(bot: RefineryBot) -> None:
    await bot.add_cog(Imagine(bot))
