"""Votes cast or retracted while the bot was away: receives on_ready / on_resumed, reads the recent
rounds' reactions from Discord, and defers what to journal to the service (bot/vote_reconcile.py).

Discord sends no reaction events for the time a bot was down, nor for a session it could not resume
(a new IDENTIFY, hence `on_ready` again). Reading is paced (`[votes] reconcile_pace_s` before each
request) so a restart with many recent rounds leaves Discord's rate limits to the live traffic:
one `GET` of the message per round (its reaction counts), and a listing of the users of a vote
emoji (`GET …/reactions/{emoji}?limit=100&after=…`, page by page) only where someone besides the
bot reacted with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import discord
from discord.ext import commands

from bot.client import RefineryBot
from bot.vote_reconcile import ReconcileSummary, ShownReactions
from storage.records import RoundPosted

log = logging.getLogger(__name__)

PAGE = 100  # users per reaction listing request, Discord's maximum


class VoteReconciliation(commands.Cog):
    # A resumed session lost nothing if Discord replayed it, but after a long outage a compare is cheap
    # insurance; short blips (Discord asks clients to reconnect routinely) are not worth the requests.
    resume_gap_s: float = 30.0

    def __init__(self, bot: RefineryBot) -> None:
        self.bot = bot
        self._task: asyncio.Task[ReconcileSummary] | None = None
        self._again = False  # another gap happened while a run was going: run once more after it
        self._away_since: float | None = None  # monotonic time of the last disconnect
        self.last: ReconcileSummary | None = None
        self.finished = asyncio.Event()  # set after each run, for tests and the log

    async def cog_unload(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        self._away_since = None
        self._start("start-up or a new gateway session")

    @commands.Cog.listener()
    async def on_disconnect(self) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()

    @commands.Cog.listener()
    async def on_resumed(self) -> None:
        away, self._away_since = self._away_since, None
        gap = 0.0 if away is None else time.monotonic() - away
        if gap >= self.resume_gap_s:
            self._start(f"gateway resumed after {gap:.0f} s away")

    def _start(self, why: str) -> None:
        if not self.bot.service.reconciler.enabled:
            return
        if self._task is not None:
            self._again = True
            return
        log.info("reconciling recent rounds' votes with Discord (%s)", why)
        self._task = asyncio.create_task(self.bot.service.reconciler.run(self._read), name="refinery-vote-reconcile")
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[ReconcileSummary]) -> None:
        if self._task is task:
            self._task = None
        if task.cancelled():
            return
        if (error := task.exception()) is not None:
            log.error("reconciling votes with Discord failed", exc_info=error)
        else:
            self.last = task.result()
        self.finished.set()
        if self._again and not self.bot.is_closed():
            self._again = False
            self._start("another gap during the last run")

    async def _read(self, posted: RoundPosted) -> ShownReactions:
        """emoji → the people (no bots) reacting with it on the round's message; None if unreadable."""
        pace = self.bot.config.votes.reconcile_pace_s
        channel = self.bot.get_partial_messageable(posted.channel_id, guild_id=posted.guild_id)
        try:
            await asyncio.sleep(pace)
            message = await channel.fetch_message(posted.message_id)
            shown: dict[str, set[int]] = {}
            for reaction in message.reactions:
                emoji = reaction.emoji
                if not isinstance(emoji, str) or self.bot.service.candidate_for_emoji(emoji) is None:
                    continue  # custom emoji and other emoji are never votes
                # Only the bot's own seeded emoji: nobody to list, no request spent.
                alone = reaction.count <= (1 if reaction.me else 0)
                shown[emoji] = set() if alone else await self._users(reaction, pace)
            return shown
        except discord.NotFound:
            log.info("round %s: message %s is gone; its votes stay as journaled", posted.round_id, posted.message_id)
        except discord.HTTPException as exc:
            log.warning("round %s: could not read the reactions of message %s (%s); votes stay as journaled",
                        posted.round_id, posted.message_id, exc)
        return None

    async def _users(self, reaction: discord.Reaction, pace: float) -> set[int]:
        """Every person (no bots, not this bot) who reacted, one paced request per page of 100."""
        me = self.bot.user.id if self.bot.user is not None else None
        users: set[int] = set()
        after: discord.Object | None = None
        while True:
            await asyncio.sleep(pace)
            page = [user async for user in reaction.users(limit=PAGE, after=after)]
            users |= {user.id for user in page if not user.bot and user.id != me}
            if len(page) < PAGE:
                return users
            after = discord.Object(id=max(user.id for user in page))  # listings are ordered by user id


async def setup(bot: RefineryBot) -> None:
    await bot.add_cog(VoteReconciliation(bot))
