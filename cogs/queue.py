"""The queue as users see it: `/queue`, `/cancel`, the ❌ reaction on an acknowledgement, and, at
start-up, answering the jobs that waited in Redis while the bot was down. Decisions live in the service.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.client import RefineryBot
from bot.emoji import same_emoji
from bot.errors import RefineryError
from bot.service import RefineryService
from bot.tickets import Ticket
from cogs.members import member_of
from cogs.rounds import CancelButton, Edit, run_and_post
from pipeline.jobs import Job

log = logging.getLogger(__name__)


class Queue(commands.Cog):
    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot
        self.service = bot.service
        self._answering: set[asyncio.Task[Any]] = set()

    async def cog_load(self) -> None:
        for job, ticket in await self.service.pending_answers():
            task = asyncio.create_task(self._answer(job, ticket), name=f"refinery-resume-{job.job_id}")
            self._answering.add(task)
            task.add_done_callback(self._answered)

    async def cog_unload(self) -> None:
        for task in list(self._answering):
            task.cancel()

    @app_commands.command(name="queue", description="Show the image queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        lines = await self.service.queue_for(member_of(interaction.user, interaction.permissions),
                                             interaction.channel_id or 0)
        await interaction.response.send_message(render.queue_text(lines), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your queued or running jobs (or one job by id)")
    @app_commands.describe(job="A job id from /queue (moderators may cancel anyone's)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        await cancel_job(self.service, interaction, job)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """❌ on an acknowledgement: the acknowledgement then says "cancelled" (run_and_post)."""
        cancel = self.bot.config.queue.cancel_emoji
        if payload.member is None or payload.member.bot or not same_emoji(str(payload.emoji), cancel):
            return
        await self.service.cancel_by_reaction(member_of(payload.member), payload.message_id, cancel)

    async def _answer(self, job: Job, ticket: Ticket) -> None:
        """A job acknowledged by an earlier run of the bot: answer on its acknowledgement, like a new one."""
        await self.bot.wait_until_ready()
        await run_and_post(self.bot, ticket.origin, job.request.prompt,
                           lambda show: self.service.complete(job, ticket, show),
                           self._edit_or_post(ticket), note=ticket.note)

    def _edit_or_post(self, ticket: Ticket) -> Edit:
        """Edit the old acknowledgement; if it is gone (deleted, or not editable), post a new message
        that mentions the requester instead, and go on editing that one (mention kept)."""
        channel = self.bot.get_partial_messageable(ticket.origin.channel_id, guild_id=ticket.origin.guild_id)
        target: list[discord.PartialMessage | discord.Message] = [channel.get_partial_message(ticket.ack_message_id)]
        mention = [""]

        async def edit(**fields: Any) -> discord.Message:
            if "content" in fields:
                fields["content"] = mention[0] + (fields["content"] or "")
            if mention[0]:
                fields["allowed_mentions"] = render.pinging(ticket.origin.user_id)
            try:
                message = await target[0].edit(**fields)
            except (discord.NotFound, discord.Forbidden) as exc:
                log.info("acknowledgement %s of a resumed job is gone (%s); posting anew", ticket.ack_message_id, exc)
                mention[0] = f"<@{ticket.origin.user_id}> "
                files = fields.pop("attachments", None) or []
                for file in files:
                    file.reset()  # the failed edit already read them to the end
                fields["content"] = mention[0] + (fields.get("content") or "")
                fields["allowed_mentions"] = render.pinging(ticket.origin.user_id)  # the requester only
                message = await channel.send(**fields, files=files)
            target[0] = message
            return message

        return edit

    def _answered(self, task: asyncio.Task[Any]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("answering a resumed job failed", exc_info=task.exception())


async def cancel_job(service: RefineryService, interaction: discord.Interaction, job: str | None) -> None:
    """`/cancel` and the 🛑 button under an acknowledgement: the answer is private."""
    try:
        cancelled = await service.cancel(member=member_of(interaction.user, interaction.permissions), job_id=job)
    except RefineryError as exc:
        text = await service.report_error(exc, user_id=interaction.user.id, channel_id=interaction.channel_id or 0)
        await interaction.response.send_message(text, ephemeral=True)
        return
    names = ", ".join(f"`{j}`" for j in cancelled)
    text = f"🛑 Cancelled {names}." if cancelled else "You have nothing in the queue."
    await interaction.response.send_message(text, ephemeral=True)


async def press_cancel_button(interaction: discord.Interaction, button: CancelButton) -> None:
    """🛑 pressed under an acknowledgement (also after a restart): cancels that job."""
    await cancel_job(interaction.client.service, interaction, button.job_id)  # type: ignore[attr-defined]


async def setup(bot: RefineryBot) -> None:
    CancelButton.on_press = press_cancel_button
    bot.add_dynamic_items(CancelButton)
    await bot.add_cog(Queue(bot))
