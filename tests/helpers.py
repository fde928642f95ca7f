"""Shared fakes and builders for the core's unit tests (as python-discord's tests/helpers.py).

Each fake implements the same declared surface as the real part, so the core cannot tell them apart:
`MemoryJournal` is an `EventLog` (storage/async_journal.py) in memory, `InstantGenerator` a
`BaseGenerator` that answers at once, `FakeClock` the clock the core is given. `core_service` wires
the real `RefineryService` to them (and to the real in-process queue), so a rule of the core is
tested in milliseconds, without discord.py, diffusers, SQLite or Oxen.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from bot.config import Config, config_from_dict
from bot.permissions import Member
from bot.service import RefineryService
from pipeline.generator import BaseGenerator
from pipeline.queue import LocalQueue
from pipeline.requests import GenerationRequest, GenerationResult, ProgressCallback
from storage.images import ImageStore
from storage.journal import JournalEvent, JournalStats, validate_record
from storage.records import Record, Round, RoundPosted, VoteEvent, new_id

T0 = 1_767_312_000.0  # 2026-01-02, a fixed "now" for records and clocks


class FakeClock:
    """A clock that moves only when told: `clock()` reads it, `clock.advance(s)` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryJournal:
    """The journal's contract in memory: seqs from 1, a vote event journaled only when it changes the
    vote state, and the query tables (rounds, round messages, votes) kept in step with each append."""

    def __init__(self) -> None:
        self.log: list[JournalEvent] = []
        self.rounds: dict[str, Round] = {}
        self.posts: list[tuple[int, str]] = []  # (message id, round id), in order
        self.votes: set[tuple[str, int, int]] = set()
        self.closed = False

    async def append(self, *records: Record) -> list[int]:
        for record in records:
            validate_record(record)
        seqs = []
        for record in records:
            if isinstance(record, VoteEvent):
                key = (record.round_id, record.candidate, record.user_id)
                if (key in self.votes) == (record.action == "add"):
                    seqs.append(0)  # a repeated add or a remove of nothing
                    continue
                (self.votes.add if record.action == "add" else self.votes.discard)(key)
            elif isinstance(record, Round):
                self.rounds[record.round_id] = record
            elif isinstance(record, RoundPosted):
                self.posts.append((record.message_id, record.round_id))
            self.log.append(JournalEvent(len(self.log) + 1, record.kind, record, T0))
            seqs.append(len(self.log))
        return seqs

    async def append_vote(self, vote: VoteEvent) -> bool:
        return (await self.append(vote))[0] > 0

    async def round(self, round_id: str) -> Round | None:
        return self.rounds.get(round_id)

    async def round_for_message(self, message_id: int) -> Round | None:
        found = [rid for mid, rid in self.posts if mid == message_id]
        return self.rounds.get(found[-1]) if found else None

    async def message_for_round(self, round_id: str) -> int | None:
        found = [mid for mid, rid in self.posts if rid == round_id]
        return found[-1] if found else None

    async def vote_state(self, round_id: str) -> dict[int, set[int]]:
        state: dict[int, set[int]] = {}
        for rid, candidate, user in self.votes:
            if rid == round_id:
                state.setdefault(candidate, set()).add(user)
        return state

    async def has_vote(self, round_id: str, candidate: int, user_id: int) -> bool:
        return (round_id, candidate, user_id) in self.votes

    async def posted_since(self, since: float) -> list[RoundPosted]:
        return [r for r in self.records("round_messages") if r.created_at >= since]

    async def stats(self) -> JournalStats:
        by_kind: dict[str, int] = {}
        for event in self.log:
            by_kind[event.kind] = by_kind.get(event.kind, 0) + 1
        return JournalStats(len(self.log), len(self.log), by_kind, dict(by_kind), 0, None, len(self.log), 0)

    async def events(self, kind: str) -> list[JournalEvent]:
        return [e for e in self.log if e.kind == kind]

    async def recent(self, kind: str, limit: int) -> list[JournalEvent]:
        return [e for e in reversed(self.log) if e.kind == kind][:limit]

    async def close(self) -> None:
        self.closed = True

    def records(self, kind: str) -> list[Any]:
        """The journaled records of one kind, oldest first (for assertions)."""
        return [e.record for e in self.log if e.kind == kind]


def png(colour: tuple[int, int, int] = (200, 40, 40), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class InstantGenerator(BaseGenerator):
    """Answers at once with one small PNG per seed (unless `gate` is cleared: then it waits for it, so
    jobs stay queued while a test looks); remembers the requests it was given."""

    model_id = "instant"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
        if not self.gate.wait(timeout=10):
            raise TimeoutError("the test never opened the generator's gate")
        self.requests.append(request)
        if progress is not None:
            progress(request.steps, request.steps)
        return GenerationResult(images=tuple(png((seed % 256, 0, 0)) for seed in request.seeds), seeds=request.seeds,
                                model_id=self.model_id, scheduler="none", elapsed_s=0.0)


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    """A validated config keeping its data in `data_dir`, with `sections` overriding the defaults."""
    raw: dict[str, dict[str, Any]] = {"storage": {"data_dir": str(data_dir)}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


LORA_LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def write_lora_file(folder: Path, *, layer: str = LORA_LAYER, down: tuple[int, ...] = (4, 32),
                    up: tuple[int, ...] = (64, 4)) -> Path:
    """`<folder>/pytorch_lora_weights.safetensors` in diffusers' LoRA format, one layer of zeros: a whole file
    for the load check (pipeline/adapter_check.py reads its header), never weights to generate with."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pytorch_lora_weights.safetensors"
    save_file({f"unet.{layer}.lora.down.weight": np.zeros(down, np.float32),
               f"unet.{layer}.lora.up.weight": np.zeros(up, np.float32)}, str(path))
    return path


def make_member(user_id: int, *, moderator: bool = False, roles: Sequence[str] = ()) -> Member:
    return Member(user_id, role_names=frozenset(roles), manage_guild=moderator)


def make_round(**changes: Any) -> Round:
    """A text-to-image round of four candidates by user 1 in channel 7; fields can be changed."""
    base = Round(round_id=new_id(), prompt="a red fox", negative_prompt="", mode="text2img", steps=4, guidance=7.5,
                 width=64, height=64, seeds=(1, 2, 3, 4), model_id="instant", model_revision="", scheduler="none",
                 image_paths=tuple(f"images/r/{k}.png" for k in range(1, 5)), requester_id=1, guild_id=None,
                 channel_id=7, source="slash", queued_s=0.0, generate_s=0.0, created_at=T0)
    return replace(base, **changes)


@dataclass
class Core:
    service: RefineryService
    journal: MemoryJournal
    generator: InstantGenerator
    clock: FakeClock
    queue: LocalQueue

    async def posted_round(self, message_id: int, **changes: Any) -> Round:
        """A round journaled and shown in message `message_id` (as if the bot had made and posted it)."""
        record = make_round(**changes)
        await self.journal.append(record, RoundPosted(record.round_id, message_id, record.channel_id, None))
        return record


@contextlib.asynccontextmanager
async def core_service(data_dir: Path, **sections: dict[str, Any]) -> AsyncIterator[Core]:
    """The real service on the fakes (and the real in-process queue), started and closed around the block."""
    journal, generator, clock = MemoryJournal(), InstantGenerator(), FakeClock()
    queue = LocalQueue(generator)
    await queue.start()
    service = RefineryService(make_config(data_dir, **sections), journal, queue, ImageStore(data_dir), clock=clock,
                              export_key="test-export-key-0123456789")
    await service.load()
    try:
        yield Core(service, journal, generator, clock, queue)
    finally:
        await queue.close()
