"""Serving what was learned: which trained adapter the bot uses, and the blinded arena. No discord, no torch.

Moderators switch the adapter (`/model use|off`) and run the arena (`/arena start|stop`); each change is
journaled as a ModerationAction (`model_use`, `model_off`, `arena_start`, `arena_stop`, with the
adapter's name, sha256 and weight or fraction as JSON in `reason`) and replayed at start-up, so a
restart keeps what the moderators chose; with no such event the config's `[model] adapter` and
`[arena] adapter` apply. A change applies to the next job: `apply` stamps each new request. An adapter
is load-checked before it is chosen (`/model use`, `/arena start`, the config's at start-up): a file the
base model could not load (truncated, random bytes, another model's layers; see pipeline.adapter_check)
is refused with the reason, instead of every later round failing. A journaled choice is pinned by its
sha256, so a file damaged since is refused by the generator, which says why.

An arena round is an ordinary text-to-image round in which two candidates come from the base model
and two from the adapter, with the same prompt and paired seeds (base and adapter share seeds a and b,
so each pair differs only by the adapter), in positions shuffled by a random draw that the round
records (`Round.arms`, e.g. "baab"). The message is built like any other: nothing in the text, the
file names or the PNGs says which is which. Seeds a and b are fresh secret draws, journaled in
`Round.seeds` (exports and training stay reproducible) but never shown: the message shows the seed the
prompt was asked with (`Round.shown_seed`), and `/imagine` with it makes neither arm's images, so nobody
can regenerate the base candidates to find them. (Regenerating the shown seed does reveal that the
round was not ordinary, never which positions are which.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.errors import InvalidInput
from bot.permissions import Action, Member
from pipeline.adapter_check import BrokenAdapter, check_adapter, unet_shapes
from pipeline.adapters import LORA_FILE, file_sha256
from pipeline.requests import MAX_SEED, AdapterRef, GenerationRequest, Mode
from storage.arena import ArenaReport, arena_report, read_arena
from storage.async_journal import EventLog
from storage.journal import Journal
from storage.records import ModerationAction, new_id

log = logging.getLogger(__name__)

ARENA_SOURCES = ("slash", "message")  # fresh prompts; refinements and buttons keep their parent's model
_ACTIONS = ("model_use", "model_off", "arena_start", "arena_stop")


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter on disk, with what its training.json says about it."""

    name: str
    sha256: str
    method: str | None = None
    steps: int | None = None
    train_examples: int | None = None
    held_out_accuracy: float | None = None
    held_out_accuracy_start: float | None = None
    created_at: float | None = None


@dataclass(frozen=True)
class Arena:
    adapter: AdapterRef
    fraction: float


@dataclass(frozen=True)
class ArenaResults:
    reports: list[ArenaReport]
    revealed: list[tuple[str, str, str]] = field(default_factory=list)  # (round id, adapter, arms), oldest first
    hidden: int = 0  # arena rounds younger than [arena] reveal_after_s


def read_adapter(models_dir: Path, name: str) -> AdapterInfo:
    """The adapter `name` under `models_dir` (InvalidInput naming what is missing)."""
    folder = Path(models_dir) / name
    if "/" in name or name.startswith(".") or not (folder / LORA_FILE).is_file():
        raise InvalidInput(f"There is no trained adapter `{name[:64]}` (no {LORA_FILE} in {folder}): see "
                           "`/model list`, or train one with `refinery train`.")
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):  # an adapter made elsewhere: usable, nothing to tell
        meta = json.loads((folder / "training.json").read_text())
    return AdapterInfo(name, file_sha256(folder / LORA_FILE), meta.get("method"), meta.get("steps_done"),
                       (meta.get("data") or {}).get("train_examples"), meta.get("held_out_accuracy"),
                       meta.get("held_out_accuracy_start"), meta.get("created_at"))


def usable_adapter(models_dir: Path, model: str, name: str) -> AdapterInfo:
    """`read_adapter`, and InvalidInput with the reason when base `model` could not load its file."""
    info = read_adapter(models_dir, name)
    try:
        check_adapter(Path(models_dir) / name / LORA_FILE, unet_shapes(model))
    except BrokenAdapter as error:
        raise InvalidInput(f"Adapter `{name}` cannot be used: {error}. Train it again, or copy its folder again "
                           "from where it was trained.") from None
    return info


def list_adapters(models_dir: Path) -> list[AdapterInfo]:
    folder = Path(models_dir)
    if not folder.is_dir():
        return []
    return [read_adapter(folder, child.name) for child in sorted(folder.iterdir())
            if child.is_dir() and (child / LORA_FILE).is_file()]


class AdapterDesk:
    """The adapter in use and the arena: state, its journal, and how each new request is stamped."""

    def __init__(self, config: Config, journal: EventLog, require: Callable[[Action, Member], None], *,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config, self.journal, self.require, self.clock = config, journal, require, clock
        self.models_dir = config.models_path
        self.active: AdapterRef | None = None
        self.arena: Arena | None = None
        self._rng = rng or random.SystemRandom()  # the assignment must not be guessable from earlier rounds

    async def load(self) -> None:
        """Start-up: the last journaled choices, else the config's defaults."""
        events = [e.record for e in await self.journal.events("moderation")]
        choices = [r for r in events if isinstance(r, ModerationAction) and r.action in _ACTIONS]
        model = [r for r in choices if r.action.startswith("model_")]
        arena = [r for r in choices if r.action.startswith("arena_")]
        if model:
            self.active = self._ref(model[-1]) if model[-1].action == "model_use" else None
        elif self.config.model.adapter:
            self.active = await self._configured(self.config.model.adapter, self.config.model.adapter_weight)
        if arena:
            last, ref = arena[-1], self._ref(arena[-1])
            started = last.action == "arena_start" and ref is not None
            self.arena = Arena(ref, float(json.loads(last.reason)["fraction"])) if started and ref else None
        elif self.config.arena.adapter:
            ref = await self._configured(self.config.arena.adapter, 1.0)
            self.arena = Arena(ref, self.config.arena.fraction) if ref else None
        log.info("adapter in use: %s; arena: %s", self.active.label if self.active else "none (base model)",
                 f"{self.arena.adapter.label} on {self.arena.fraction:.0%} of rounds" if self.arena else "off")

    @staticmethod
    def _ref(action: ModerationAction) -> AdapterRef | None:
        try:
            data = json.loads(action.reason)
            return AdapterRef(str(data["name"]), str(data["sha256"]), float(data.get("weight", 1.0)))
        except (ValueError, KeyError, TypeError):
            return None

    async def _configured(self, name: str, weight: float) -> AdapterRef | None:
        try:
            info = await asyncio.to_thread(usable_adapter, self.models_dir, self.config.model.id, name)
        except InvalidInput as error:
            log.error("configured adapter %r is not usable, serving the base model: %s", name, error)
            return None
        return AdapterRef(info.name, info.sha256, weight)

    async def adapters(self) -> list[AdapterInfo]:
        return await asyncio.to_thread(list_adapters, self.models_dir)

    async def use(self, member: Member, name: str, weight: float) -> AdapterRef:
        self.require(Action.MANAGE_MODELS, member)
        if not 0.0 <= weight <= 2.0:
            raise InvalidInput(f"weight={weight:g} is out of range: use 0 to 2 (1 = as trained).")
        info = await asyncio.to_thread(usable_adapter, self.models_dir, self.config.model.id, name)
        ref = AdapterRef(info.name, info.sha256, weight)
        await self._journal("model_use", member.user_id, {"name": ref.name, "sha256": ref.sha256, "weight": weight})
        self.active = ref
        return ref

    async def off(self, member: Member) -> AdapterRef | None:
        self.require(Action.MANAGE_MODELS, member)
        was = self.active
        await self._journal("model_off", member.user_id, {"was": was.label if was else None})
        self.active = None
        return was

    async def arena_start(self, member: Member, name: str, fraction: float) -> Arena:
        self.require(Action.MANAGE_MODELS, member)
        if not 0.0 < fraction <= 1.0:
            raise InvalidInput(f"fraction={fraction:g} is out of range: use more than 0 and at most 1.")
        if self.config.generation.candidates % 2:
            raise InvalidInput(f"The arena needs an even number of candidates per round "
                               f"(generation.candidates = {self.config.generation.candidates}).")
        info = await asyncio.to_thread(usable_adapter, self.models_dir, self.config.model.id, name)
        arena = Arena(AdapterRef(info.name, info.sha256), fraction)
        await self._journal("arena_start", member.user_id, {"name": info.name, "sha256": info.sha256,
                                                            "fraction": fraction})
        self.arena = arena
        return arena

    async def arena_stop(self, member: Member) -> Arena | None:
        self.require(Action.MANAGE_MODELS, member)
        was = self.arena
        await self._journal("arena_stop", member.user_id, {"was": was.adapter.label if was else None})
        self.arena = None
        return was

    async def _journal(self, action: str, moderator_id: int, data: dict[str, Any]) -> None:
        await self.journal.append(ModerationAction(new_id(), action, moderator_id, None, None,
                                                   json.dumps(data, separators=(",", ":"))))

    async def results(self, adapter_name: str | None = None) -> ArenaResults:
        """Anyone: the win-rates so far, and the assignment of arena rounds old enough to reveal."""
        return await asyncio.to_thread(self._results, adapter_name)

    def _results(self, adapter_name: str | None) -> ArenaResults:
        journal = Journal(self.config.journal_path)  # its own read connection, in this thread
        try:
            log = read_arena(journal, self.config.data_dir)
        finally:
            journal.close()
        reports = arena_report(log, adapter_name)
        shown = {report.adapter for report in reports}
        rounds = [r for r in log.rounds if r.adapter in shown]  # removed and flagged rounds stay out
        cutoff = self.clock() - self.config.arena.reveal_after_s
        revealed = [(r.round_id, str(r.adapter), str(r.arms)) for r in rounds if r.created_at <= cutoff]
        return ArenaResults(reports, revealed, len(rounds) - len(revealed))

    def apply(self, request: GenerationRequest, source: str) -> GenerationRequest:
        """Stamp a new request with the adapter in use, or make it an arena round (by a random draw)."""
        arena = self.arena
        if (arena is not None and request.mode is Mode.TEXT and source in ARENA_SOURCES and request.count >= 2
                and request.count % 2 == 0 and self._rng.random() < arena.fraction):
            return arena_request(request, arena.adapter, self._rng)
        if self.active is not None and request.adapter is None:
            return replace(request, adapter=self.active)
        return request


def arena_request(request: GenerationRequest, adapter: AdapterRef, rng: random.Random) -> GenerationRequest:
    """Half the candidates from the base model and half from the adapter on the same fresh, secret seeds,
    shuffled. The round still shows the seed it was asked with (`shown_seed`), which makes none of them."""
    secret: list[int] = []
    while len(secret) < request.count // 2:  # distinct, and never one a member could type from the message
        seed = rng.randint(0, MAX_SEED)
        if seed not in secret and seed not in request.seeds:
            secret.append(seed)
    slots = [(arm, seed) for arm in (False, True) for seed in secret]
    rng.shuffle(slots)
    return replace(request, adapter=adapter, arms=tuple(arm for arm, _ in slots),
                   seeds=tuple(seed for _, seed in slots), shown_seed=request.seeds[0])
