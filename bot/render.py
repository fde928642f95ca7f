"""Turning rounds and job status into what Discord shows: text, PNG files and emoji."""

from __future__ import annotations

import io
from collections.abc import Sequence

import discord

from bot.config import Config
from bot.discord_limits import MAX_CONTENT, clip, fit, shown
from bot.service import QueueLine
from pipeline.jobs import JobState, JobStatus
from storage.records import Round


def prompt_ack(prompt: str) -> str:
    """The first answer to a prompt sent as a message, before the queue has placed it."""
    return fit(f"🎨 **{shown(prompt, 200)}**\n⏳ queued…")


def refine_ack(summary: str) -> str:
    """The first answer to a reply that refines a round: what will be done."""
    return fit(f"🔧 {clip(summary, 600)}\n⏳ queued…")


def status_text(status: JobStatus, prompt: str, cancel_emoji: str | None = None, note: str | None = None) -> str:
    """The acknowledgement, edited as the job moves: position and ETA, then step progress (after the
    refinement's `note`, if any)."""
    return fit(f"{clip(note, 600)}\n{_status_text(status, prompt, cancel_emoji)}" if note
               else _status_text(status, prompt, cancel_emoji))


def _status_text(status: JobStatus, prompt: str, cancel_emoji: str | None) -> str:
    head = f"🎨 **{shown(prompt, 200)}**\n"
    hint = f" · react {cancel_emoji} to cancel" if cancel_emoji else ""
    note = f"\n⏱️ {status.note}" if status.note else ""
    if status.state is JobState.QUEUED:
        eta = f" · about {status.eta_s:.0f} s" if status.eta_s is not None else ""
        return head + f"⏳ queued — position {status.position}{eta}{hint}"
    if status.state is JobState.RUNNING:
        if status.total_steps:
            filled = round(10 * status.step / status.total_steps)
            bar = "▰" * filled + "▱" * (10 - filled)
            return head + f"🖌️ generating… step {status.step}/{status.total_steps} {bar}{hint}{note}"
        return head + f"🖌️ generating…{hint}{note}"
    return head + f"{status.state.value}"


def round_text(record: Round, config: Config, note: str | None = None) -> str:
    """The text above a round's four images: lineage, prompt, settings, seeds, id, how to interact."""
    emoji = config.votes.emoji
    lines = []
    if record.parent_round_id:
        which = f" #{record.parent_candidate}" if record.parent_candidate else ""
        lines.append(f"↳ refined from round `{record.parent_round_id}`{which}: "
                     f"'{shown(record.instruction or '', 200)}'")
    if note:
        lines.append(f"🔧 {_clip(note, 300)}")
    lines.append(f"🎨 **{shown(record.prompt, 600)}**")
    if record.negative_prompt:
        lines.append(f"🚫 {shown(record.negative_prompt, 300)}")
    # One seed for every round, never one per candidate: an ordinary round's candidate k uses seed + k - 1.
    # An arena round shows the seed it was asked with, never its secret ones: those would let anyone
    # regenerate the base candidates with /imagine and so name the base positions.
    lines.append(f"seed `{record.shown_seed if record.shown_seed is not None else min(record.seeds)}`")
    lines.append(f"{record.steps} steps · guidance {record.guidance:g} · {record.width}×{record.height} · "
                 f"model `{_clip(record.model_id, 80)}` · round `{record.round_id}`")
    lines.append(f"Vote with {emoji[0]}–{emoji[-1]} ({config.votes.none_emoji} if none is good) · "
                 "reply to refine (`2: make the sky purple`) · 🔁 reroll · V variations · U upscale")
    return _clip("\n".join(lines), MAX_CONTENT)


def round_files(record: Round, images: tuple[bytes, ...], *, spoiler: bool = False) -> list[discord.File]:
    """One PNG attachment per candidate; Discord shows four as a 2×2 mosaic (blurred when spoilers)."""
    return [discord.File(io.BytesIO(png), filename=f"{record.round_id}_{k}.png", spoiler=spoiler)
            for k, png in enumerate(images, start=1)]


def queue_text(entries: Sequence[QueueLine]) -> str:
    """`/queue`: one line per job, running first, then in the order they will run; a job the viewer
    may not see is only "a job in another channel"."""
    if not entries:
        return "The queue is empty."
    lines = []
    for entry in entries[:20]:
        status = entry.status
        where = (f"running, step {status.step}/{status.total_steps}" if status.state is JobState.RUNNING
                 else f"#{status.position}" + (f", about {status.eta_s:.0f} s" if status.eta_s is not None else ""))
        if entry.job is None:
            lines.append(f"a job in another channel — {where} — waited {entry.waited_s:.0f} s")
            continue
        lines.append(f"`{entry.job.job_id}` <@{entry.job.user_id}> — {where} — waited {entry.waited_s:.0f} s — "
                     f"{shown(entry.job.prompt, 60)}")
    if len(entries) > 20:
        lines.append(f"… and {len(entries) - 20} more")
    return _clip("\n".join(lines), MAX_CONTENT)


def pinging(user_id: int) -> discord.AllowedMentions:
    """Mentions for a message that pings one user (the requester) and nobody its text may name."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(user_id)],
                                   replied_user=False)


def _clip(text: str, limit: int) -> str:
    return clip(text, limit)
