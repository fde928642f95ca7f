"""Serving adapters and the blinded arena, end to end through the real discord.py client and the loopback server."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.devserver import MANAGE_GUILD
from pipeline.adapters import file_sha256
from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings
from pipeline.requests import AdapterRef, GenerationRequest
from pipeline.tiny import build_tiny_adapter
from storage.exports import ExportFilters, build_dataset
from storage.journal import Journal
from storage.pseudonyms import Pseudonymiser
from tests.cogs.test_export import until
from tests.conftest import TinyModels, World

EMOJI = ["1️⃣", "2️⃣", "3️⃣", "4️⃣"]


def install_adapter(data_dir: Path, tiny_models: TinyModels, name: str = "red", seed: int = 0) -> str:
    """A tiny random adapter under <data_dir>/models/<name> with a training.json; its sha256."""
    folder = build_tiny_adapter(data_dir / "models" / name, tiny_models.sd, seed=seed)
    (folder / "training.json").write_text(json.dumps({"method": "dpo", "steps_done": 12, "held_out_accuracy": 0.8,
                                                      "held_out_accuracy_start": 0.0,
                                                      "data": {"train_examples": 40}}))
    return file_sha256(folder / "pytorch_lora_weights.safetensors")


async def slash(world: World, name: str, options: dict[str, Any], user: int, done: Any = None) -> Any:
    interaction = await world.server.invoke_slash(name, options, user_id=user, channel_id=world.imagine)
    await interaction.wait_for(done or (lambda i: bool(i.responses)), timeout=120)
    return interaction


async def imagine(world: World, app: Any, user: int, prompt: str, seed: int) -> tuple[dict[str, Any], Any]:
    interaction, record = await imagine_round(world, app, user, {"prompt": prompt, "seed": seed})
    return interaction.original, record


async def imagine_round(world: World, app: Any, user: int, options: dict[str, Any]) -> tuple[Any, Any]:
    """/imagine with `options`: the interaction (its answer is the round's message) and the journaled round."""
    interaction = await slash(world, "imagine", options, user,
                              lambda i: i.original is not None and len(i.original["attachments"]) == 4)
    message = interaction.original
    found: list[Any] = []

    async def posted() -> bool:  # the round's message id is journaled right after the message is sent
        found[:] = [await app.journal.round_for_message(int(message["id"]))]
        return found[0] is not None
    await until(posted)
    return interaction, found[0]


def pixels(world: World, message: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(world.server.attachment_bytes(a["url"]))).convert("RGB"), dtype=float)
            for a in message["attachments"]]


def text(interaction: Any) -> str:
    return (interaction.original or interaction.responses[0]["data"])["content"]


@pytest.mark.slow
async def test_model_use_changes_the_next_round_and_off_restores_the_base(world: World, start_bot, tmp_path: Path,
                                                                         tiny_models: TinyModels) -> None:
    """/model use: the next round differs and records the adapter, journaled; plain members are refused;
    /model off: the base model's images again, bit for bit."""
    sha = install_adapter(tmp_path / "data", tiny_models)
    mod = world.server.add_user("mod", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        base_message, base = await imagine(world, app, world.alice, "a red fox", 5)
        assert base.adapter is None and base.arms is None

        refused = await slash(world, "model use", {"name": "red"}, world.bob)
        assert "Only moderators can change the model" in text(refused)
        listed = await slash(world, "model list", {}, world.bob)
        assert "`red` (sha256 " in text(listed) and "dpo, 12 steps on 40 examples" in text(listed)
        unknown = await slash(world, "model use", {"name": "blue"}, mod)
        assert "There is no trained adapter `blue`" in text(unknown)

        used = await slash(world, "model use", {"name": "red", "weight": 1.0}, mod)
        assert f"red@sha256:{sha[:12]}" in text(used) and used.responses[0]["data"]["flags"] & 64
        adapted_message, adapted = await imagine(world, app, world.alice, "a red fox", 5)
        assert adapted.adapter == f"red@sha256:{sha[:12]}" and adapted.arms is None
        assert adapted.seeds == base.seeds
        for a, b in zip(pixels(world, base_message), pixels(world, adapted_message), strict=True):
            assert np.abs(a - b).mean() > 5, "the adapter changed nothing"
        assert "red" not in adapted_message["content"].split("\n")[-2]  # the model line names the base only

        await slash(world, "model off", {}, mod)
        again_message, again = await imagine(world, app, world.alice, "a red fox", 5)
        assert again.adapter is None
        assert [world.server.attachment_bytes(a["url"]) for a in again_message["attachments"]] == [
            world.server.attachment_bytes(a["url"]) for a in base_message["attachments"]]
        actions = [e.record for e in await app.journal.events("moderation")]
        assert [(a.action, a.moderator_id) for a in actions] == [("model_use", mod), ("model_off", mod)]
        assert json.loads(actions[0].reason) == {"name": "red", "sha256": sha, "weight": 1.0}


@pytest.mark.slow
async def test_arena_rounds_are_blind_and_votes_become_comparisons(world: World, start_bot, tmp_path: Path,
                                                                  tiny_models: TinyModels) -> None:
    """An arena round: two candidates from each arm on paired seeds (checked by regenerating each alone), a
    message that reveals nothing; scripted votes give the comparisons /arena results counts; the arena
    export loads with datasets."""
    data_dir = tmp_path / "data"
    sha = install_adapter(data_dir, tiny_models)
    mod = world.server.add_user("mod", permissions=MANAGE_GUILD)
    carol, dan = world.server.add_user("carol"), world.server.add_user("dan")
    async with start_bot({"arena": {"reveal_after_s": 0.0}}) as app:
        refused = await slash(world, "arena start", {"name": "red", "fraction": 1.0}, world.alice)
        assert "Only moderators" in text(refused)
        started = await slash(world, "arena start", {"name": "red", "fraction": 1.0}, mod)
        assert "Arena on: 100%" in text(started)
        message, record = await imagine(world, app, world.alice, "a lighthouse", 21)
        arms = record.arms
        assert arms is not None and sorted(arms) == ["a", "a", "b", "b"] and record.adapter.startswith("red@")
        pairs = {arm: sorted(s for s, a in zip(record.seeds, arms, strict=True) if a == arm) for arm in "ab"}
        assert pairs["a"] == pairs["b"] and len(set(pairs["a"])) == 2, "paired seeds"
        assert record.shown_seed == 21 and not {21, 22, 23, 24} & set(record.seeds), "secret seeds, journaled"
        content = message["content"]
        assert "red" not in content and "sha256" not in content and "adapter" not in content.lower()
        assert "seed `21`" in content and "`22`" not in content, "one seed, as in any round: no pairs to see"
        assert [a["filename"] for a in message["attachments"]] == [f"{record.round_id}_{k}.png" for k in range(1, 5)]
        for attachment in message["attachments"]:
            image = Image.open(io.BytesIO(world.server.attachment_bytes(attachment["url"])))
            assert not image.info and not getattr(image, "text", {}), "no PNG metadata"

        # Regenerate each candidate alone from the logged seeds and assignment.
        check = DiffusersGenerator(GeneratorSettings(model=str(tiny_models.sd), scheduler="ddim", device="cpu",
                                                     local_files_only=True, models_dir=str(data_dir / "models")))
        posted = pixels(world, message)
        for k, (arm, seed) in enumerate(zip(arms, record.seeds, strict=True)):
            request = GenerationRequest(prompt="a lighthouse", seeds=(seed,), steps=record.steps,
                                        guidance=record.guidance, width=record.width, height=record.height)
            regenerated = {}
            for which, adapter in (("a", AdapterRef("red", sha)), ("b", None)):
                png = check.generate(GenerationRequest(**{**request.__dict__, "adapter": adapter})).images[0]
                regenerated[which] = np.abs(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float)
                                            - posted[k]).mean()
            other = "b" if arm == "a" else "a"
            # The random tiny adapter moves a 4-step image by about 4–9 of 255 on average, by seed (now secret).
            assert regenerated[arm] < 1.0 < 2.0 < regenerated[other], (k, arm, regenerated)

        # bob picks both adapter images (4 adapter wins), carol one base image (2 base wins), dan all (ties).
        adapter_k = [k for k, arm in enumerate(arms, start=1) if arm == "a"]
        base_k = [k for k, arm in enumerate(arms, start=1) if arm == "b"]
        channel, mid = world.imagine, int(message["id"])
        votes = [(world.bob, k) for k in adapter_k] + [(carol, base_k[0])] + [(dan, k) for k in range(1, 5)]
        for user, k in votes:
            await world.server.add_reaction(channel, mid, user, EMOJI[k - 1])

        async def counted() -> bool:
            state = await app.journal.vote_state(record.round_id)
            return sum(len(users) for users in state.values()) == len(votes)
        await until(counted)
        results = await slash(world, "arena results", {}, world.alice,
                              lambda i: i.original is not None and "Arena results" in i.original["content"])
        body = results.original["content"]
        assert "adapter ahead in 1 of 1 rounds that leaned one way" in body, body  # the round is the unit
        assert "1 of 1 arena round(s) with a decisive vote (0 even) · 2 voter(s) · 6 decisive comparisons " \
               "(4 won by the adapter)" in body, body
        assert f"`{record.round_id}` {arms}" in body  # reveal_after_s = 0: the assignment is shown

        stopped = await slash(world, "arena stop", {}, mod)
        assert "Arena off" in text(stopped)
        _, plain = await imagine(world, app, world.alice, "a lighthouse", 21)
        assert plain.arms is None and plain.adapter is None

    journal = Journal(data_dir / "journal.sqlite3")
    try:
        result = build_dataset(journal, data_dir, tmp_path / "export", ["arena"], ExportFilters(),
                               Pseudonymiser(b"k"), name="arena-test")
    finally:
        journal.close()
    import datasets

    ds = datasets.load_dataset(str(result.folder), "arena", split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 6 and sorted(ds["winner"]) == ["adapter"] * 4 + ["base"] * 2
    for row in ds:
        adapter_model = row[f"model_{row['adapter_image']}"]
        assert adapter_model.endswith(f"+red@sha256:{sha[:12]}") and "+" not in row[f"model_{1 - row['adapter_image']}"]


def progress_edits(world: World, interaction: Any) -> list[str]:
    """The "generating… step x/N" edits the bot made to an interaction's answer, in order."""
    return [r.json["content"] for r in world.server.requests if r.method == "PATCH" and interaction.token in r.path
            and "generating… step" in (r.json or {}).get("content", "")]


@pytest.mark.slow
async def test_an_arena_round_cannot_be_regenerated_or_told_apart(world: World, start_bot, tmp_path: Path,
                                                                  tiny_models: TinyModels) -> None:
    """/imagine with the prompt and seed an arena round shows makes none of its images, so nobody can find its
    base candidates; its progress and its message read like that ordinary round's (same step counts)."""
    install_adapter(tmp_path / "data", tiny_models)
    mod = world.server.add_user("mod", permissions=MANAGE_GUILD)
    options = {"prompt": "a lighthouse", "seed": 21, "steps": 16}
    async with start_bot({"generation": {"progress_interval_s": 0.01}}) as app:
        await slash(world, "arena start", {"name": "red", "fraction": 1.0}, mod)
        arena_answer, arena = await imagine_round(world, app, world.alice, options)
        await slash(world, "arena stop", {}, mod)
        shown = int(re.search(r"seed `(\d+)`", arena_answer.original["content"])[1])
        plain_answer, plain = await imagine_round(world, app, world.bob, {**options, "seed": shown})
    assert arena.arms is not None and plain.arms is None and shown == 21

    arena_png = [world.server.attachment_bytes(a["url"]) for a in arena_answer.original["attachments"]]
    plain_png = [world.server.attachment_bytes(a["url"]) for a in plain_answer.original["attachments"]]
    assert not set(arena_png) & set(plain_png), "the shown seed reproduced an arena candidate"
    closest = min(np.abs(a - b).mean() for a in pixels(world, arena_answer.original)
                  for b in pixels(world, plain_answer.original))
    assert closest > 5, f"an arena candidate is nearly an ordinary one ({closest:.2f})"

    def form(text: str, round_id: str = "") -> str:  # what differs between any two rounds: ids, counters, bars
        text = text.replace(round_id, "ID") if round_id else text
        return re.sub(r"[▰▱]+", "", re.sub(r"step \d+/", "step x/", text))
    arena_progress, plain_progress = progress_edits(world, arena_answer), progress_edits(world, plain_answer)
    assert arena_progress and plain_progress, (arena_progress, plain_progress)
    denominators = {int(n) for text in arena_progress + plain_progress for n in re.findall(r"step \d+/(\d+)", text)}
    assert denominators == {16}, (arena_progress, plain_progress)  # an arena round ran 2 × 16: "x/32" gave it away
    assert {form(t) for t in arena_progress} == {form(t) for t in plain_progress}
    assert form(arena_answer.original["content"], arena.round_id) == form(plain_answer.original["content"],
                                                                          plain.round_id)


@pytest.mark.slow
async def test_a_worker_with_other_weights_refuses_the_job(world: World, start_bot, tmp_path: Path,
                                                          tiny_models: TinyModels) -> None:
    """The bot names adapter `red` by its sha256; a generator whose `red` holds other weights refuses the job,
    and the user reads why (never images made with the wrong weights)."""
    install_adapter(tmp_path / "data", tiny_models)
    elsewhere = tmp_path / "worker-models"
    build_tiny_adapter(elsewhere / "red", tiny_models.sd, seed=7)
    generator = DiffusersGenerator(GeneratorSettings(model=str(tiny_models.sd), scheduler="ddim", device="cpu",
                                                     local_files_only=True, models_dir=str(elsewhere)))
    mod = world.server.add_user("mod", permissions=MANAGE_GUILD)
    async with start_bot(generator=generator) as app:
        await slash(world, "model use", {"name": "red"}, mod)
        answer = await slash(world, "imagine", {"prompt": "a kite"}, world.alice,
                             lambda i: i.original is not None and "Generation failed" in i.original["content"])
        assert "adapter `red` here has other weights" in answer.original["content"]
        assert not answer.original["attachments"]
        assert not [e for e in await app.journal.events("rounds")]


@pytest.mark.slow
async def test_a_broken_adapter_is_refused_by_model_use_with_the_reason(world: World, start_bot, tmp_path: Path,
                                                                       tiny_models: TinyModels) -> None:
    """/model use on a truncated or random-bytes adapter file: the moderator reads why it cannot be used, nothing
    is journaled, and the next round is an ordinary base-model round, not "Generation failed" (#23.5)."""
    import os

    data_dir = tmp_path / "data"
    install_adapter(data_dir, tiny_models)
    whole = (data_dir / "models" / "red" / "pytorch_lora_weights.safetensors").read_bytes()
    for name, content in (("cut", whole[:-100]), ("noise", os.urandom(len(whole)))):
        (data_dir / "models" / name).mkdir(parents=True)
        (data_dir / "models" / name / "pytorch_lora_weights.safetensors").write_bytes(content)
    mod = world.server.add_user("mod", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        for name in ("cut", "noise"):
            refused = await slash(world, "model use", {"name": name}, mod)
            assert f"Adapter `{name}` cannot be used: pytorch_lora_weights.safetensors is not a whole safetensors " \
                   "file" in text(refused), text(refused)
        used = await slash(world, "model use", {"name": "red"}, mod)
        assert "From the next job on, rounds use `red@sha256:" in text(used)
        await slash(world, "model off", {}, mod)
        _, plain = await imagine(world, app, world.alice, "a red fox", 5)
        assert plain.adapter is None
        actions = [e.record.action for e in await app.journal.events("moderation")]
        assert actions == ["model_use", "model_off"]
