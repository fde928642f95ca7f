"""A simulated community playing the real bot on the loopback Discord server (tests, bench, demo).

Members ask with `/imagine`, look at the four images the bot sent (the attachments, as a member's
client downloads them) and react with the emoji of the one their taste picks. Everything goes through
the real discord.py client, the bot's service, its journal and its vote handling; the only simulated
part is the people (`pipeline.toyworld.community`).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from bot.devserver import DiscordDevServer
from pipeline.toyworld.community import Voter

if TYPE_CHECKING:
    from bot.app import App
    from storage.records import Round


@dataclass(frozen=True)
class PlayedRound:
    round_id: str
    message_id: int
    prompt: str
    seed: int
    images: tuple[Image.Image, ...]  # as shown, in position order
    picks: dict[int, int]  # voter id → the 1-based position they reacted to


async def imagine(server: DiscordDevServer, app: App, channel: int, user: int, prompt: str, seed: int,
                  timeout: float = 60) -> PlayedRound:
    """`/imagine prompt seed` and the round it produced, once its images are posted."""
    candidates = app.config.generation.candidates
    interaction = await server.invoke_slash("imagine", {"prompt": prompt, "seed": seed}, user_id=user,
                                            channel_id=channel)
    await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == candidates),
                               timeout=timeout)
    assert interaction.original is not None
    message = interaction.original
    images = tuple(Image.open(io.BytesIO(server.attachment_bytes(a["url"]))).convert("RGB")
                   for a in message["attachments"])  # in the order the message shows them
    rnd = await _round_of(app, int(message["id"]), timeout)
    return PlayedRound(rnd.round_id, int(message["id"]), prompt, seed, images, {})


async def _round_of(app: App, message_id: int, timeout: float) -> Round:
    """The round a message shows: the bot links them just after it posts the images."""
    from bot.errors import NotARound

    deadline = time.monotonic() + timeout
    while True:
        try:
            return await app.service.round_for_message(message_id)
        except NotARound:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def vote(server: DiscordDevServer, app: App, channel: int, played: PlayedRound, voters: Sequence[Voter],
               rng: random.Random) -> PlayedRound:
    """Every voter reacts to the candidate they pick; returns the round with the picks."""
    emoji = app.config.votes.emoji
    picks = {v.user_id: v.pick(played.images, rng) for v in voters}
    for user, k in picks.items():
        await server.add_reaction(channel, played.message_id, user, emoji[k - 1])
    return replace(played, picks=picks)


async def play(server: DiscordDevServer, app: App, channel: int, requester: int, voters: Sequence[Voter],
               prompts: Sequence[str], *, seed: int = 0) -> list[PlayedRound]:
    """One round per prompt, voted by `voters`; waits until every vote is journaled.

    The rounds' seeds come from `seed` alone (the voters' random picks draw from another generator), so
    two communities given the same prompts and seed vote on the very same images.
    """
    seeds, picks = random.Random(seed), random.Random(f"{seed}-votes")
    played = []
    for prompt in prompts:
        rnd = await imagine(server, app, channel, requester, prompt, seeds.randrange(1, 2**31))
        played.append(await vote(server, app, channel, rnd, voters, picks))
    await settled(app, played)
    return played


async def settled(app: App, played: Sequence[PlayedRound], timeout: float = 30) -> None:
    """Reactions are handled asynchronously: wait until the journal holds every pick."""
    deadline = time.monotonic() + timeout
    for rnd in played:
        while True:
            state = await app.journal.vote_state(rnd.round_id)
            if all(user in state.get(k, set()) for user, k in rnd.picks.items()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"votes on round {rnd.round_id} not journaled within {timeout} s")
            await asyncio.sleep(0.02)


async def draw(server: DiscordDevServer, app: App, channel: int, requester: int,
               prompts: Sequence[tuple[str, int]]) -> list[PlayedRound]:
    """One unvoted round per (prompt, seed), in order."""
    return [await imagine(server, app, channel, requester, prompt, s) for prompt, s in prompts]


async def train_and_use(server: DiscordDevServer, config_file: Path, name: str, *, moderator: int, channel: int,
                        train_args: Sequence[str] = ()) -> str:
    """`refinery train --name NAME …` (the real command, in a child process, as a moderator runs it beside
    the bot), then `/model use name:NAME`; returns what the command printed."""
    argv = ["train", "--config", str(config_file), "--name", name, "--threads", "1", "--device", "cpu",
            *train_args]
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", *argv], capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"refinery {' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr[-3000:]}")
    answer = await slash_text(server, "model use", {"name": name}, moderator, channel)
    if not answer.startswith("From the next job on"):
        raise RuntimeError(f"/model use {name} answered: {answer}")
    return done.stdout


async def slash_text(server: DiscordDevServer, name: str, options: dict[str, Any], user: int, channel: int,
                     timeout: float = 60) -> str:
    """Run a slash command and return the text of its answer (a reply or a deferred follow-up)."""
    interaction = await server.invoke_slash(name, options, user_id=user, channel_id=channel)
    await interaction.wait_for(lambda i: bool(i.original and i.original.get("content"))
                               or any(r.get("type") == 4 for r in i.responses), timeout=timeout)
    if interaction.original and interaction.original.get("content"):
        return str(interaction.original["content"])
    return str(next(r for r in interaction.responses if r.get("type") == 4)["data"]["content"])


# What a session with a simulated community changes in the offline config: the toy model's sampler steps,
# and no per-user event limit (simulated members vote faster than the 30 a minute a real member may).
COMMUNITY_SETTINGS: dict[str, dict[str, Any]] = {"generation": {"default_steps": 10},
                                                 "moderation": {"events_per_minute": 100_000}}
