"""Refinement by reply and by button: a reply to a round, or 🔁 / V<k> / U<k>, makes a child round.

Receives discord.py events and defers the decisions (which candidate, which mode, the mask) to the
service; this file only reads the reply and its attachment and shows what happens.
"""

from __future__ import annotations

import logging
import re

import discord
from discord.ext import commands

from bot import render
from bot.client import RefineryBot, send_ephemeral
from bot.errors import InvalidInput, RefineryError
from bot.tickets import Origin
from cogs.rounds import RoundButton, defer_with_ack, is_nsfw, run_and_post

log = logging.getLogger(__name__)


class Refine(commands.Cog):
    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot
        self.service = bot.service

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or self.bot.user is None or message.reference is None:
            return
        parent_id = message.reference.message_id
        if parent_id is None or not await self.service.is_round_message(parent_id):
            return
        if not self.service.accept_event(message.author.id):
            return  # over the per-user rate limit: dropped without an answer, so spam gets no echo
        origin = Origin(user_id=message.author.id, channel_id=message.channel.id,
                        guild_id=message.guild.id if message.guild else None, source="reply",
                        nsfw_channel=is_nsfw(message.channel))
        text = re.sub(rf"<@!?{self.bot.user.id}>", " ", message.content).strip()
        try:
            mask = await self._mask_attachment(message)
            refinement = await self.service.plan_reply(message_id=parent_id, text=text,
                                                       user_id=origin.user_id, mask_attachment=mask)
        except RefineryError as exc:
            reply = await self.service.report_error(exc, user_id=origin.user_id, channel_id=origin.channel_id)
            await message.reply(reply, mention_author=False)
            return
        ack = await message.reply(render.refine_ack(refinement.summary), mention_author=False)
        await run_and_post(self.bot, origin, refinement.request.prompt,
                           lambda show: self.service.refine(refinement, origin, show, message_id=message.id,
                                                            ack_message_id=ack.id),
                           ack.edit, note=refinement.summary)

    async def _mask_attachment(self, message: discord.Message) -> bytes | None:
        """The first attachment, as a mask; refused before download when it is too big."""
        if not message.attachments:
            return None
        attachment = message.attachments[0]
        limit = self.bot.config.refine.max_mask_bytes
        if attachment.size > limit:
            raise InvalidInput(f"The attached mask is {attachment.size / 1e6:.1f} MB; the limit is "
                               f"{limit / 1e6:.1f} MB.")
        return await attachment.read()

async def press_round_button(interaction: discord.Interaction, button: RoundButton) -> None:
    """🔁 / V<k> / U<k> pressed (also after a restart): a new child round, answered as a new message."""
    bot: RefineryBot = interaction.client  # type: ignore[assignment]
    service = bot.service
    origin = Origin(user_id=interaction.user.id, channel_id=interaction.channel_id or 0,
                    guild_id=interaction.guild_id, source="button", nsfw_channel=is_nsfw(interaction.channel))
    try:
        refinement = await service.plan_button(round_id=button.round_id, action=button.action, candidate=button.k,
                                               user_id=origin.user_id)
    except RefineryError as exc:
        text = await service.report_error(exc, user_id=origin.user_id, channel_id=origin.channel_id)
        await send_ephemeral(interaction, text)
        return
    ack_id = await defer_with_ack(interaction)
    message_id = interaction.message.id if interaction.message is not None else 0
    await run_and_post(bot, origin, refinement.request.prompt,
                       lambda show: service.refine(refinement, origin, show, message_id=message_id,
                                                   ack_message_id=ack_id),
                       interaction.edit_original_response, note=refinement.summary)


async def setup(bot: RefineryBot) -> None:
    RoundButton.on_press = press_round_button
    bot.add_dynamic_items(RoundButton)
    await bot.add_cog(Refine(bot))
