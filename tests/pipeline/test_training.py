"""LoRA training from votes on the tiny checkpoint: the start, learning, the saved adapter, stop and resume."""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from pipeline.training import (
    LORA_FILE,
    CheckpointDamaged,
    InsufficientMemory,
    LoraTrainer,
    TrainProgress,
    TrainResult,
    TrainSettings,
    estimate_training_bytes,
    train,
)
from pipeline.training.data import encode_examples, sample_indices
from pipeline.training.memory import check_free_memory
from storage.training_data import FeedbackImage, PreferencePair
from tests.conftest import TinyModels

RED, BLUE = (210, 50, 50), (50, 50, 210)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    # Two threads are ~10× slower on the shared CI cores, and bit-identical results need a fixed count.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def community(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Voters who always prefer a reddish picture to a bluish one: 32 training pairs over 8 prompts, 24
    held-out pairs over 8 other prompts. Each image is a solid shade (±20 per channel) with a little noise."""
    folder = tmp_path_factory.mktemp("community")
    rng = np.random.default_rng(0)

    def png(name: str, base: tuple[int, int, int]) -> Path:
        shade = np.clip(np.array(base) + rng.integers(-20, 21, 3), 0, 255)
        pixels = np.clip(shade + rng.normal(0, 4, (64, 64, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{name}.png"
        Image.fromarray(pixels).save(path)
        return path

    def pairs(subject: str, prompts: int, per_prompt: int) -> list[PreferencePair]:
        return [PreferencePair(f"{subject} number {i}", png(f"{subject}{i}-{j}w", RED), png(f"{subject}{i}-{j}l", BLUE),
                               round_id=f"{subject}{i}", margin=1)
                for i in range(prompts) for j in range(per_prompt)]

    return pairs("landscape", 8, 4), pairs("portrait", 8, 3)


def feedback(pairs: list[PreferencePair]) -> list[FeedbackImage]:
    """The same votes as likes (winners) and dislikes (losers), for KTO."""
    return [image for p in pairs for image in (FeedbackImage(p.caption, p.winner, True, p.round_id, 1),
                                               FeedbackImage(p.caption, p.loser, False, p.round_id, -1))]


def settings(**overrides: object) -> TrainSettings:
    base = TrainSettings(method="dpo", steps=3, rank=4, lr=1e-2, batch=2, resolution=64, eval_every=100)
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tiny_models: TinyModels, community: tuple[list[PreferencePair], list[PreferencePair]],
            tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """Three DPO steps on the tiny checkpoint, large learning rate: enough to move the adapter."""
    train_pairs, held_pairs = community
    return train(tiny_models.sd, train_pairs, held_pairs, tmp_path_factory.mktemp("trained"), settings(),
                 device="cpu")


def test_dpo_starts_at_ln2_and_chance(trained: TrainResult) -> None:
    """Step 0 of a real run: the adapter is the identity, so the loss is ln 2 and held-out accuracy 0.5."""
    assert abs(trained.curves.loss[0] - math.log(2)) < 1e-6
    assert trained.curves.train_accuracy[0] == 0.5
    assert trained.curves.held_out[0] == (0, 0.5)
    assert trained.steps_done == 3 and not trained.interrupted and trained.checkpoint is None
    assert [step for step, _ in trained.curves.held_out] == [0, 3]  # before training and at the end
    assert trained.device == "cpu" and trained.dtype == "float32" and trained.peak_memory_bytes is None
    assert trained.counts == {"train": 32, "held_out": 24, "train_images": 64, "train_captions": 8}
    assert set(trained.versions) == {"torch", "diffusers", "transformers", "peft"}
    assert json.loads(json.dumps(trained.to_dict()))["beta"] == 2500.0


def test_only_the_adapter_is_trainable(tiny_models: TinyModels,
                                       community: tuple[list[PreferencePair], list[PreferencePair]]) -> None:
    """LoRA on the attention projections only; the UNet's own weights, the VAE and text encoder frozen."""
    trainer = LoraTrainer.load(str(tiny_models.sd), community[0][:2], [], settings(), device="cpu")
    trainable = [name for name, p in trainer.pipe.unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} >= {"to_q", "to_k", "to_v", "0"}
    assert not any(p.requires_grad for p in trainer.pipe.vae.parameters())
    assert not any(p.requires_grad for p in trainer.pipe.text_encoder.parameters())
    assert trainer.evaluate() is None  # no held-out examples


def test_dpo_learns_the_communitys_taste(colour_model: Path,
                                         community: tuple[list[PreferencePair], list[PreferencePair]],
                                         tmp_path: Path) -> None:
    """30 steps on "reddish beats bluish": held-out accuracy (other prompts, other images) from 0.5 to ≥ 0.75."""
    reports: list[TrainProgress] = []
    result = train(colour_model, *community, tmp_path,
                   settings(steps=30, lr=3e-3, batch=4, eval_every=10), progress=reports.append, device="cpu")
    assert [step for step, _ in result.curves.held_out] == [0, 10, 20, 30]
    start, end = result.curves.held_out[0][1], result.curves.held_out[-1][1]
    assert start == 0.5
    assert end >= 0.75, result.curves.held_out  # 0.917 here; 0.875 to 0.958 over 6 other data and run seeds
    assert [r.step for r in reports] == list(range(1, 31))
    assert all(r.steps == 30 and r.it_per_s > 0 for r in reports)
    assert reports[-1].eta_s == 0 and reports[-1].held_out_accuracy == end
    assert reports[8].held_out_accuracy == 0.5 and reports[9].held_out_accuracy == result.curves.held_out[1][1]


def test_saved_adapter_loads_into_a_plain_pipeline(tiny_models: TinyModels, trained: TrainResult) -> None:
    """load_lora_weights(out) changes the picture; disabled or unloaded, the base picture comes back bit for bit."""
    assert trained.lora is not None and trained.lora.name == LORA_FILE
    assert not (trained.lora.parent / "checkpoint").exists()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models.sd, local_files_only=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def picture() -> np.ndarray:
        return pipe("a landscape number 1", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    base = picture()
    pipe.load_lora_weights(trained.lora.parent)
    adapted = picture()
    assert np.abs(adapted - base).max() > 1e-4
    pipe.disable_lora()
    assert np.array_equal(picture(), base)
    pipe.enable_lora()
    assert np.array_equal(picture(), adapted)
    pipe.unload_lora_weights()
    assert np.array_equal(picture(), base)


def test_stop_and_resume_equals_a_straight_run(tiny_models: TinyModels,
                                               community: tuple[list[PreferencePair], list[PreferencePair]],
                                               tmp_path: Path) -> None:
    """6 steps straight == 3 steps, stop, resume for 3: bit-identical adapter tensors and curves (CPU)."""
    train_pairs, held_pairs = community[0][:8], community[1][:4]
    run = settings(steps=6, grad_accum=2, eval_every=2, checkpoint_every=2)
    straight = train(tiny_models.sd, train_pairs, held_pairs, tmp_path / "straight", run, device="cpu")
    assert not (tmp_path / "straight" / "checkpoint").exists()  # written at steps 2 and 4, removed at the end

    stop = threading.Event()

    def stop_after_three(report: TrainProgress) -> None:
        if report.step == 3:
            stop.set()

    out = tmp_path / "stopped"
    first = train(tiny_models.sd, train_pairs, held_pairs, out, run, progress=stop_after_three, stop=stop,
                  device="cpu")
    assert first.interrupted and first.steps_done == 3 and first.lora is None
    assert first.checkpoint == out / "checkpoint" and (out / "checkpoint" / "state.json").is_file()
    assert not (out / LORA_FILE).exists()
    os.replace(out / "checkpoint", out / ".checkpoint.previous")  # a save killed between its renames (#23.3)

    with pytest.raises(ValueError, match=r"lr: 0\.02 != 0\.01"):
        train(tiny_models.sd, train_pairs, held_pairs, out, replace(run, lr=2e-2), resume=True, device="cpu")
    with pytest.raises(ValueError, match="examples differ"):
        train(tiny_models.sd, train_pairs[:-1], held_pairs, out, run, resume=True, device="cpu")

    # Saving checkpoints more or less often changes nothing trained: such a resume is the same run (#23.3).
    resumed = train(tiny_models.sd, train_pairs, held_pairs, out, replace(run, checkpoint_every=5), resume=True,
                    device="cpu")
    assert not resumed.interrupted and resumed.steps_done == 6
    assert resumed.curves == straight.curves
    assert straight.lora is not None and resumed.lora is not None
    want, got = load_file(straight.lora), load_file(resumed.lora)
    assert want.keys() == got.keys() and want
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert any(float(tensor.abs().max()) > 0 for name, tensor in want.items() if ".lora.up." in name)


def test_resume_without_a_checkpoint_is_refused(tiny_models: TinyModels,
                                                community: tuple[list[PreferencePair], list[PreferencePair]],
                                                tmp_path: Path) -> None:
    """resume=True with no checkpoint in `out`: FileNotFoundError naming the folder, before any loading."""
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(tiny_models.sd, community[0][:2], [], tmp_path, settings(), resume=True, device="cpu")


def test_gradient_checkpointing_gives_the_same_steps(tiny_models: TinyModels,
                                                     community: tuple[list[PreferencePair], list[PreferencePair]],
                                                     tmp_path: Path) -> None:
    """Recomputing activations in the backward pass changes memory, not the numbers."""
    pairs = community[0][:4]
    plain = train(tiny_models.sd, pairs, [], tmp_path / "plain", settings(steps=2), device="cpu")
    checkpointed = train(tiny_models.sd, pairs, [], tmp_path / "checkpointed",
                         settings(steps=2, gradient_checkpointing=True), device="cpu")
    assert plain.lora is not None and checkpointed.lora is not None
    want, got = load_file(plain.lora), load_file(checkpointed.lora)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_kto_runs_from_half_its_weights(tiny_models: TinyModels,
                                        community: tuple[list[PreferencePair], list[PreferencePair]],
                                        tmp_path: Path) -> None:
    """KTO at step 0: balanced batches of 2 likes and 2 dislikes lose (0.5·2 · 2 + 0.5·1 · 2) / 4 = 0.75."""
    run = settings(method="kto", batch=4, kto_desirable_weight=2.0, kto_undesirable_weight=1.0)
    result = train(tiny_models.sd, feedback(community[0][:6]), feedback(community[1][:2]), tmp_path, run,
                   device="cpu")
    assert result.curves.loss[0] == pytest.approx(0.75, abs=1e-6)
    assert result.curves.held_out[0] == (0, 0.5)
    assert result.counts["train_desirable"] == result.counts["train_undesirable"] == 6
    assert result.lora is not None and result.lora.is_file()


def test_kto_batches_are_class_balanced(tiny_models: TinyModels,
                                        community: tuple[list[PreferencePair], list[PreferencePair]]) -> None:
    """With 1 like for 5 dislikes, batches still alternate: each class fills half the slots."""
    images = feedback(community[0][:5])
    images = [i for i in images if not i.desirable] + [next(i for i in images if i.desirable)]
    trainer = LoraTrainer.load(str(tiny_models.sd), images, [], settings(method="kto"), device="cpu")
    examples = trainer.train_examples
    assert examples.desirable is not None and int(examples.desirable.sum()) == 1
    generator = torch.Generator().manual_seed(0)
    for size in (4, 5):
        for _ in range(10):
            labels = examples.desirable[sample_indices(examples, size, generator, balanced=True)]
            assert abs(int(labels.sum()) - (size - int(labels.sum()))) <= 1
    again = encode_examples(trainer.pipe, images, 64)
    assert torch.equal(again.latents, examples.latents)  # encoding is deterministic (the posterior's mode)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"method": "ppo"}, "method must be one of dpo, kto, got 'ppo'"),
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"rank": 2.5}, "rank must be a positive integer, got 2.5"),
    ({"lr": -1e-5}, "lr must be a positive finite number, got -1e-05"),
    ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
    ({"beta": 0.0}, "beta must be a positive finite number, got 0.0"),
    ({"batch": 0}, "batch must be a positive integer, got 0"),
    ({"grad_accum": True}, "grad_accum must be a positive integer, got True"),
    ({"resolution": 500}, "resolution must be a positive multiple of 8, got 500"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"eval_every": 0}, "eval_every must be a positive integer, got 0"),
    ({"checkpoint_every": 0}, "checkpoint_every must be a positive integer or None, got 0"),
    ({"max_grad_norm": 0}, "max_grad_norm must be a positive finite number, got 0"),
    ({"kto_undesirable_weight": float("inf")}, "kto_undesirable_weight must be a positive finite number, got inf"),
])
def test_bad_settings_are_refused_by_name(overrides: dict[str, object], message: str, tmp_path: Path) -> None:
    """check() and train() raise ValueError naming the setting and its bad value, before loading anything."""
    bad = settings(**overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        bad.check()
    with pytest.raises(ValueError, match=message.split(" must")[0]):
        train("no/such/model", [], [], tmp_path, bad, device="cpu")


def test_bad_examples_are_refused(community: tuple[list[PreferencePair], list[PreferencePair]],
                                  tmp_path: Path) -> None:
    """No training examples, or KTO images given to DPO: ValueError before the model is loaded."""
    with pytest.raises(ValueError, match="no training examples"):
        train("no/such/model", [], community[1], tmp_path, settings(), device="cpu")
    wrong_kind = "dpo trains on PreferencePair examples; held_out_examples holds a FeedbackImage"
    with pytest.raises(ValueError, match=wrong_kind):
        train("no/such/model", community[0], feedback(community[1]), tmp_path, settings(), device="cpu")


def test_memory_estimate_and_refusal(tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate grows with batch and shrinks with checkpointing; too little free memory → InsufficientMemory."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models.sd, local_files_only=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    small = estimate_training_bytes(pipe, settings(batch=1))
    assert estimate_training_bytes(pipe, settings(batch=8)) > small
    assert estimate_training_bytes(pipe, settings(batch=8, gradient_checkpointing=True)) < \
        estimate_training_bytes(pipe, settings(batch=8))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (small // 2, 80 * 2**30))
    with pytest.raises(InsufficientMemory, match=r"needs about 1\.0 GiB, 0\.5 GiB are free") as raised:
        check_free_memory(pipe, settings(batch=1), torch.device("cuda"))
    assert raised.value.needed_bytes == small


def _edit_state(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        for key, value in changes.items():
            if value is None:
                del state[key]
            else:
                state[key] = value
        (folder / "state.json").write_text(json.dumps(state))
    return edit


def _write(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).write_bytes(data((folder / name).read_bytes()))
    return damage


def _other_shapes(folder: Path) -> None:
    state = torch.load(folder / "trainer.pt", weights_only=True)
    state["weights"] = {name: torch.zeros(3, 3) for name in state["weights"]}
    torch.save(state, folder / "trainer.pt")


@pytest.mark.parametrize(("damage", "file", "reason"), [
    (_write("trainer.pt", lambda data: data[: len(data) // 2]), "trainer.pt", "truncated or not a torch file"),
    (_write("trainer.pt", lambda data: np.random.default_rng(0).bytes(len(data))), "trainer.pt",
     "truncated or not a torch file"),
    (_write("trainer.pt", lambda data: b""), "trainer.pt", "truncated or not a torch file"),
    (lambda folder: torch.save({"weights": []}, folder / "trainer.pt"), "trainer.pt", "weights, optimizer"),
    (_other_shapes, "trainer.pt", "does not fit this run's adapter"),
    (_write("state.json", lambda data: data[:20]), "state.json", "not JSON"),
    (_edit_state(settings=None), "state.json", "it has no 'settings'"),
    (_edit_state(step=10**9), "state.json", "step 1000000000 is out of range"),
    (_edit_state(step=-5), "state.json", "step -5 is out of range"),
    (_edit_state(step=1), "state.json", "step 1 but its loss curve has 2 steps"),
], ids=["truncated", "random", "empty", "not-trainer-state", "other-shapes", "state-not-json", "no-settings",
        "step-1e9", "step-minus-5", "step-edited"])
def test_a_damaged_checkpoint_is_named_not_a_traceback(damage: Callable[[Path], None], file: str, reason: str,
                                                       tiny_models: TinyModels, tmp_path: Path,
                                                       community: tuple[list[PreferencePair], list[PreferencePair]],
                                                       ) -> None:
    """A truncated, random, empty or foreign trainer.pt, a state.json without settings or with an impossible step:
    resuming raises CheckpointDamaged, one line naming the file and what is wrong (#23.4)."""
    stop = threading.Event()
    run = settings(steps=6)
    first = train(tiny_models.sd, community[0][:4], [], tmp_path, run, stop=stop,
                  progress=lambda report: stop.set() if report.step == 2 else None, device="cpu")
    assert first.interrupted and first.steps_done == 2
    damage(tmp_path / "checkpoint")
    with pytest.raises(CheckpointDamaged) as raised:
        train(tiny_models.sd, community[0][:4], [], tmp_path, run, resume=True, device="cpu")
    message = str(raised.value)
    assert message.startswith(f"checkpoint file {tmp_path / 'checkpoint' / file} is damaged: ") and reason in message
    assert "\n" not in message and len(message) < 400, message
