"""Moderation: `/banned add|remove|list`, `/flag`, `/unflag`, `/remove`, the flag and remove emoji, and `/modlog`.

Receives discord.py events and defers every decision to `bot.service` (who may do what is decided
in `bot.permissions`); this file deletes the round's message and renders the answers. Moderator
answers are ephemeral; the requester of a removed round is told in the channel.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.client import RefineryBot
from bot.discord_limits import fit
from bot.emoji import match_emoji
from bot.permissions import Action
from cogs.members import member_of
from storage.records import ModerationAction, Round

log = logging.getLogger(__name__)


def modlog_line(action: ModerationAction) -> str:
    who = "the bot" if action.moderator_id == 0 else f"<@{action.moderator_id}>"
    parts = [f"<t:{int(action.created_at)}:f> **{action.action}** by {who}"]
    if action.target_user_id is not None and action.target_user_id != action.moderator_id:
        parts.append(f"on <@{action.target_user_id}>")
    if action.round_id:
        parts.append(f"round `{action.round_id}`")
    if action.reason and action.action != "export":  # an export's reason is a JSON blob
        parts.append(f"— {action.reason[:100]}")
    return " ".join(parts)


class Moderation(commands.Cog):
    banned = app_commands.Group(name="banned", description="Moderators: phrases that prompts may not contain")

    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot
        self.service = bot.service

    @banned.command(name="add", description="Refuse prompts and replies containing this phrase")
    @app_commands.describe(phrase="A word or phrase (matched whole-word, look-alikes and spacing undone)")
    async def banned_add(self, interaction: discord.Interaction, phrase: str) -> None:
        await self._change_banned(interaction, phrase, add=True)

    @banned.command(name="remove", description="Allow this phrase again")
    @app_commands.describe(phrase="The phrase exactly as listed by /banned list")
    async def banned_remove(self, interaction: discord.Interaction, phrase: str) -> None:
        await self._change_banned(interaction, phrase, add=False)

    async def _change_banned(self, interaction: discord.Interaction, phrase: str, *, add: bool) -> None:
        member = member_of(interaction.user, interaction.permissions)
        changed = await self.service.moderation.change_banned(member, phrase, add=add)
        done, unchanged = (("Added to the banned phrases.", "That phrase is already banned.") if add
                           else ("Removed from the banned phrases.", "That phrase is not banned."))
        await interaction.response.send_message(done if changed else unchanged, ephemeral=True)

    @banned.command(name="list", description="Show the banned phrases")
    async def banned_list(self, interaction: discord.Interaction) -> None:
        phrases = await self.service.moderation.banned_list(member_of(interaction.user, interaction.permissions))
        text = "\n".join(f"• `{p}`" for p in phrases) or "No phrases are banned."
        await interaction.response.send_message(fit(text), ephemeral=True)

    @app_commands.command(name="remove", description="Moderators: delete a round's message and drop it from exports")
    @app_commands.describe(round="The round id (shown under the round) or its message id")
    async def remove(self, interaction: discord.Interaction, round: str) -> None:  # the option's name
        member = member_of(interaction.user, interaction.permissions)
        self.service.require(Action.REMOVE, member)  # NotAllowed → the tree's handler, ephemeral
        found, message_id = await self.service.moderation.remove(member, round, reason="/remove")
        # Answer first (journaled already): the deletion is two more REST calls, not worth the 3 s limit.
        await interaction.response.send_message(f"🚫 Round `{found.round_id}` is removed.", ephemeral=True)
        await take_down(self.bot, found, message_id, found.channel_id)

    @app_commands.command(name="flag", description="Moderators: flag a round so exports leave it out")
    @app_commands.describe(round="The round id (shown under the round) or its message id")
    async def flag(self, interaction: discord.Interaction, round: str) -> None:  # shadows a builtin: the option's name
        await self._set_flag(interaction, round, flagged=True)

    @app_commands.command(name="unflag", description="Moderators: take a round's flag back")
    @app_commands.describe(round="The round id (shown under the round) or its message id")
    async def unflag(self, interaction: discord.Interaction, round: str) -> None:
        await self._set_flag(interaction, round, flagged=False)

    async def _set_flag(self, interaction: discord.Interaction, round_ref: str, *, flagged: bool) -> None:
        member = member_of(interaction.user, interaction.permissions)
        found = await self.service.moderation.set_flag(member, round_ref, flagged=flagged,
                                                       reason="/flag" if flagged else "/unflag")
        text = (f"🚩 Round `{found.round_id}` is flagged: exports leave it out (`/unflag` to undo)." if flagged
                else f"Round `{found.round_id}` is no longer flagged.")
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="modlog", description="Moderators: the last 20 moderation events")
    async def modlog(self, interaction: discord.Interaction) -> None:
        events = await self.service.moderation.modlog(member_of(interaction.user, interaction.permissions))
        text = "\n".join(modlog_line(e) for e in events) or "No moderation events yet."
        await interaction.response.send_message(fit(text), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """A moderator's flag emoji on a round flags it, the remove emoji deletes it; from anyone else
        they are only emoji (the service checks who reacted)."""
        settings = self.bot.config.moderation
        emoji = match_emoji(str(payload.emoji), (settings.flag_emoji, settings.remove_emoji))  # any spelling
        if payload.emoji.id is not None or emoji is None:
            return
        if payload.member is None or payload.member.bot:
            return  # a DM reaction has no member: moderation is a guild affair
        member = member_of(payload.member)
        if emoji == settings.flag_emoji:
            round_id = await self.service.moderation.flag_by_reaction(member, payload.message_id, emoji)
            if round_id is not None:
                log.info("round %s flagged by reaction of user %s", round_id, payload.user_id)
            return
        found = await self.service.moderation.remove_by_reaction(member, payload.message_id, emoji)
        if found is not None:
            await take_down(self.bot, found, payload.message_id, payload.channel_id)


async def take_down(bot: RefineryBot, found: Round, message_id: int | None, channel_id: int) -> None:
    """Delete the round's message and tell its requester; already gone is fine (journaled anyway)."""
    channel = bot.get_partial_messageable(channel_id)
    if message_id is not None:
        try:
            await channel.get_partial_message(message_id).delete()
        except discord.NotFound:
            pass
        except discord.HTTPException:
            log.exception("could not delete message %s of round %s", message_id, found.round_id)
    try:
        await channel.send(f"<@{found.requester_id}> a moderator removed your round `{found.round_id}`.",
                           allowed_mentions=render.pinging(found.requester_id))
    except discord.HTTPException:
        log.exception("could not tell user %s that round %s was removed", found.requester_id, found.round_id)


async def setup(bot: RefineryBot) -> None:
    await bot.add_cog(Moderation(bot))
