"""The adapter desk: which adapter new requests get, arena draws, and what a restart remembers."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bot.adapters import AdapterDesk, arena_request
from bot.config import config_from_dict
from bot.errors import InvalidInput, NotAllowed
from bot.permissions import Action, Member
from pipeline.adapters import LORA_FILE
from pipeline.requests import AdapterRef, GenerationRequest, Mode
from storage.async_journal import AsyncJournal
from storage.journal import Journal
from tests.helpers import LORA_LAYER, write_lora_file

REQUEST = GenerationRequest(prompt="a fox", seeds=(10, 11, 12, 13), steps=4, guidance=7.5, width=64, height=64)
MOD, MEMBER = Member(1, manage_guild=True), Member(2)


def deny(action: Action, member: Member) -> None:
    if not member.manage_guild:
        raise NotAllowed("Only moderators can change the model or run the arena")


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[AsyncJournal]:
    journal = AsyncJournal(Journal(tmp_path / "journal.sqlite3"))
    yield journal
    await journal.close()


def config(tmp_path: Path, **sections: dict) -> object:
    """Adapter `red` on a base model whose UNet has one projection, 32 → 64 features (its header is what counts)."""
    base = tmp_path / "base" / "unet"
    base.mkdir(parents=True, exist_ok=True)
    save_file({f"{LORA_LAYER}.weight": np.zeros((64, 32), np.float32)},
              str(base / "diffusion_pytorch_model.safetensors"))
    write_lora_file(tmp_path / "models" / "red")
    model = {"id": str(tmp_path / "base"), **sections.pop("model", {})}
    return config_from_dict({"storage": {"data_dir": str(tmp_path)}, "model": model, **sections})


def test_an_arena_request_pairs_secret_seeds_and_shuffles_two_arms() -> None:
    """Two base and two adapter candidates on two fresh seeds that both arms share, in a drawn order; the
    round shows the seed it was asked with, which is none of them."""
    ref = AdapterRef("red", "f" * 64)
    orders, drawn = set(), set()
    for seed in range(40):
        request = arena_request(REQUEST, ref, random.Random(seed))
        assert sorted(request.arms) == [False, False, True, True] and request.adapter == ref
        pairs = [sorted(s for s, a in zip(request.seeds, request.arms, strict=True) if a is arm)
                 for arm in (False, True)]
        assert pairs[0] == pairs[1] and len(set(pairs[0])) == 2, "paired seeds"
        assert request.shown_seed == 10 and not set(request.seeds) & set(REQUEST.seeds), "shown ≠ secret"
        orders.add(request.arms)
        drawn.update(request.seeds)
    assert len(orders) == 6, "every arrangement of two and two is drawn"
    assert len(drawn) == 80, "fresh seeds every round"


async def test_apply_stamps_the_adapter_and_draws_arena_rounds_for_fresh_prompts(tmp_path: Path,
                                                                               journal: AsyncJournal) -> None:
    """Fresh text-to-image prompts become arena rounds at `fraction`; replies and buttons only get the adapter."""
    desk = AdapterDesk(config(tmp_path), journal, deny, rng=random.Random(0))
    await desk.load()
    assert desk.apply(REQUEST, "slash") == REQUEST  # nothing in use
    await desk.use(MOD, "red", 0.5)
    assert desk.apply(REQUEST, "reply").adapter == desk.active and desk.active.weight == 0.5
    await desk.arena_start(MOD, "red", 1.0)
    assert len(set(desk.apply(REQUEST, "slash").arms)) == 2
    assert desk.apply(REQUEST, "button").arms == ()
    assert desk.apply(REQUEST.__class__(**{**REQUEST.__dict__, "mode": Mode.IMAGE, "init_image": b"x"}),
                      "message").arms == ()
    await desk.arena_start(MOD, "red", 0.5)
    half = AdapterDesk(config(tmp_path), journal, deny, rng=random.Random(1))
    await half.load()  # the journaled arena comes back, at its fraction
    drawn = sum(bool(half.apply(REQUEST, "slash").arms) for _ in range(400))
    assert 160 < drawn < 240, drawn


async def test_choices_are_journaled_and_replayed_and_refused_to_members(tmp_path: Path,
                                                                        journal: AsyncJournal) -> None:
    """A restart keeps the moderators' choices; members are refused; bad names and values are named."""
    desk = AdapterDesk(config(tmp_path), journal, deny)
    await desk.load()
    with pytest.raises(NotAllowed):
        await desk.use(MEMBER, "red", 1.0)
    with pytest.raises(InvalidInput, match="no trained adapter `blue`"):
        await desk.use(MOD, "blue", 1.0)
    with pytest.raises(InvalidInput, match="weight=3"):
        await desk.use(MOD, "red", 3.0)
    with pytest.raises(InvalidInput, match="fraction=0"):
        await desk.arena_start(MOD, "red", 0.0)
    await desk.use(MOD, "red", 1.0)
    await desk.arena_start(MOD, "red", 0.25)
    await desk.arena_stop(MOD)
    again = AdapterDesk(config(tmp_path), journal, deny)
    await again.load()
    assert again.active == desk.active and again.arena is None
    reasons = [json.loads(e.record.reason) for e in await journal.events("moderation")]
    assert reasons[0]["name"] == "red" and len(reasons[0]["sha256"]) == 64


async def test_config_defaults_apply_when_nothing_was_journaled(tmp_path: Path, journal: AsyncJournal) -> None:
    """[model] adapter and [arena] adapter/fraction at start-up; a missing adapter falls back to the base model."""
    desk = AdapterDesk(config(tmp_path, model={"adapter": "red", "adapter_weight": 0.7},
                              arena={"adapter": "red", "fraction": 0.3}), journal, deny)
    await desk.load()
    assert desk.active is not None and desk.active.weight == 0.7
    assert desk.arena is not None and desk.arena.fraction == 0.3
    missing = AdapterDesk(config(tmp_path, model={"adapter": "gone"}), journal, deny)
    await missing.load()
    assert missing.active is None


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(("damage", "reason"), [
    (_cut, "is not a whole safetensors file"),
    (lambda path: path.write_bytes(os.urandom(path.stat().st_size)), "is not a whole safetensors file"),
    (lambda path: path.write_bytes(b""), "is not a whole safetensors file"),
    (lambda path: save_file({"weight": np.zeros(3, np.float32)}, str(path)), "holds no LoRA weights"),
    (lambda path: write_lora_file(path.parent, layer="mid_block.attentions.0.proj_in"),
     "layer mid_block.attentions.0.proj_in is not in the base model's UNet"),
    (lambda path: write_lora_file(path.parent, down=(4, 48)), "maps 48 → 64 features in the adapter but 32 → 64"),
    (lambda path: write_lora_file(path.parent, up=(64, 8)), "rank 4 in its down matrix but 8 in its up matrix"),
], ids=["truncated", "random", "empty", "not-lora", "other-layer", "other-size", "ranks"])
async def test_a_broken_adapter_is_refused_with_the_reason(damage, reason: str, tmp_path: Path,
                                                           journal: AsyncJournal) -> None:
    """/model use and /arena start load-check the file: truncated, random or empty bytes, no LoRA weights, layers
    the base UNet lacks or has at another size are refused with the reason; nothing is journaled (#23.5)."""
    desk = AdapterDesk(config(tmp_path), journal, deny)
    await desk.load()
    await desk.use(MOD, "red", 1.0)  # whole: accepted
    before = desk.active
    damage(tmp_path / "models" / "red" / LORA_FILE)
    with pytest.raises(InvalidInput, match="Adapter `red` cannot be used: ") as raised:
        await desk.use(MOD, "red", 1.0)
    assert reason in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(InvalidInput) as arena:
        await desk.arena_start(MOD, "red", 0.5)
    assert reason in str(arena.value)
    assert desk.active == before and desk.arena is None
    assert [e.record.action for e in await journal.events("moderation")] == ["model_use"]


async def test_a_broken_configured_adapter_is_not_served_at_start_up(tmp_path: Path, journal: AsyncJournal,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """[model] adapter naming a truncated file: the base model is served and the log says why (#23.5)."""
    settings = config(tmp_path, model={"adapter": "red"}, arena={"adapter": "red"})
    _cut(tmp_path / "models" / "red" / LORA_FILE)
    desk = AdapterDesk(settings, journal, deny)
    with caplog.at_level(logging.ERROR, logger="bot.adapters"):
        await desk.load()
    assert desk.active is None and desk.arena is None
    assert "configured adapter 'red' is not usable" in caplog.text and "not a whole safetensors file" in caplog.text
