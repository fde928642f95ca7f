"""What every cog that makes a round shares: running it with live status, posting it, its buttons.

Not a cog itself. The buttons are persistent `DynamicItem`s: their custom ids carry the round id, so
they keep working after a restart without any stored view.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import discord

from bot import render
from bot.client import RefineryBot
from bot.service import FinishedRound, StatusSink
from bot.tickets import Origin
from pipeline.jobs import JobState, JobStatus
from storage.records import Round

log = logging.getLogger(__name__)

Edit = Callable[..., Awaitable[discord.Message]]
MakeRound = Callable[[StatusSink], Awaitable[FinishedRound]]


# custom_id templates of the persistent buttons (they work after a restart: discord.py DynamicItems).
ROUND_BUTTON = r"rf:(?P<action>reroll|variation|upscale):(?P<round_id>[0-9a-f]{6,32})(?::(?P<k>[0-9]{1,2}))?"
CANCEL_BUTTON = r"rf:cancel:(?P<job_id>job-[0-9a-f]{1,32})"
# What a press does belongs to the feature that handles it, which sets it when its cog loads: the
# refine cog for RoundButton, the queue cog for CancelButton. (A subclass would not do: sending a view
# registers the class of the items it holds as the handler of their template.)
Press = Callable[[discord.Interaction, Any], Awaitable[None]]


async def _unavailable(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("⚠️ That button is not available right now.", ephemeral=True)


class RoundButton(discord.ui.DynamicItem[discord.ui.Button], template=ROUND_BUTTON):
    """🔁 reroll, V<k> variation, U<k> upscale of one round; the custom id says which."""

    def __init__(self, action: str, round_id: str, k: int | None = None, *, row: int = 0) -> None:
        label = "" if action == "reroll" else f"{'V' if action == 'variation' else 'U'}{k}"
        suffix = f":{k}" if k is not None else ""
        super().__init__(discord.ui.Button(
            style=discord.ButtonStyle.secondary if action != "reroll" else discord.ButtonStyle.primary,
            label=label or None, emoji="🔁" if action == "reroll" else None, row=row,
            custom_id=f"rf:{action}:{round_id}{suffix}"))
        self.action, self.round_id, self.k = action, round_id, k

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> RoundButton:
        k = int(match["k"]) if match["k"] else None
        return cls(match["action"], match["round_id"], k)

    on_press: ClassVar[Press | None] = None  # set by cogs/refine.py

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        press = type(self).on_press
        await (press(interaction, self) if press is not None else _unavailable(interaction))


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=CANCEL_BUTTON):
    """🛑 under an acknowledgement: cancels that job (its requester, or a moderator)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.danger, label="Cancel", emoji="🛑",
                                           custom_id=f"rf:cancel:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> CancelButton:
        return cls(match["job_id"])

    on_press: ClassVar[Press | None] = None  # set by cogs/queue.py

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        press = type(self).on_press
        await (press(interaction, self) if press is not None else _unavailable(interaction))


def cancel_view(status: JobStatus) -> discord.ui.View | None:
    if not status.job_id or status.state not in (JobState.QUEUED, JobState.RUNNING):
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(status.job_id))
    return view


async def defer_with_ack(interaction: discord.Interaction) -> int:
    """Defer ("thinking…") and return the id of the message that shows it: the acknowledgement that
    becomes the round. Discord's callback response names it; ask for it only when it does not."""
    response = await interaction.response.defer(thinking=True)
    if response is not None and response.message_id is not None:
        return response.message_id
    return (await interaction.original_response()).id


def is_nsfw(channel: object) -> bool:
    """Whether Discord marks the channel NSFW (threads follow their parent; DMs are not)."""
    check = getattr(channel, "is_nsfw", None)
    return bool(check()) if callable(check) else False


def round_view(record: Round) -> discord.ui.View:
    """🔁 V1–V4 on the first row, U1–U4 on the second."""
    view = discord.ui.View(timeout=None)
    view.add_item(RoundButton("reroll", record.round_id, row=0))
    for k in range(1, len(record.seeds) + 1):
        view.add_item(RoundButton("variation", record.round_id, k, row=0 if k <= 4 else 2))
        view.add_item(RoundButton("upscale", record.round_id, k, row=1 if k <= 4 else 3))
    return view


async def run_and_post(bot: RefineryBot, origin: Origin, prompt: str, make_round: MakeRound, edit: Edit,
                       note: str | None = None) -> discord.Message | None:
    """Make a round while keeping the acknowledgement up to date, then turn it into the round.
    Tracked in `bot.answering`, so a shutdown lets it post its last word before disconnecting."""
    task = asyncio.current_task()
    assert task is not None
    bot.answering.add(task)
    try:
        return await _run_and_post(bot, origin, prompt, make_round, edit, note)
    finally:
        bot.answering.discard(task)


async def _run_and_post(bot: RefineryBot, origin: Origin, prompt: str, make_round: MakeRound, edit: Edit,
                        note: str | None) -> discord.Message | None:

    async def show(status: JobStatus) -> None:
        text = render.status_text(status, prompt, bot.config.queue.cancel_emoji, note)
        await edit(content=text, view=cancel_view(status))

    try:
        finished = await make_round(show)
    except Exception as exc:  # expected (RefineryError) or not, the acknowledgement must not stay "queued"
        text = await bot.service.report_error(exc, user_id=origin.user_id, channel_id=origin.channel_id)
        try:
            await edit(content=text, view=None)
        except discord.HTTPException:
            log.warning("could not show user %s what became of their job", origin.user_id)
        return None  # report_error logged an unexpected error in full
    record = finished.round
    message = await edit(content=render.round_text(record, bot.config, note),
                         attachments=render.round_files(record, finished.images, spoiler=finished.spoiler),
                         view=round_view(record))
    await bot.service.round_posted(record.round_id, message.id, record.channel_id, record.guild_id,
                                   finished.job_id)
    if bot.config.votes.seed_reactions:
        for emoji in bot.config.votes.emoji[: len(record.seeds)]:
            await message.add_reaction(emoji)
    return message
