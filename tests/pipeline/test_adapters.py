"""Trained adapters in the generator: loaded by name, checked by sha256, switched per run; arena rounds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.adapters import AdapterUnavailable, file_sha256
from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings
from pipeline.redis_queue import RemoteGenerationError, outcome_error
from pipeline.requests import AdapterRef, GenerationRequest, batch_key
from pipeline.tiny import build_tiny_adapter
from tests.conftest import TinyModels

REQUEST = GenerationRequest(prompt="a fox", seeds=(3, 4, 3, 4), steps=3, guidance=7.5, width=64, height=64)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_tiny_adapter(folder / "red", tiny_models.sd)
    return folder


@pytest.fixture(scope="module")
def served(models: Path, tiny_models: TinyModels) -> DiffusersGenerator:
    return DiffusersGenerator(GeneratorSettings(model=str(tiny_models.sd), scheduler="ddim", device="cpu",
                                                local_files_only=True, models_dir=str(models))).load()


def red(models: Path) -> AdapterRef:
    return AdapterRef("red", file_sha256(models / "red" / "pytorch_lora_weights.safetensors"))


def test_requests_with_adapters_cross_processes_and_arena_rounds_never_batch(models: Path) -> None:
    """to_dict/from_dict keep the adapter and arms; a mixed-arm round has no batch key; bad arms are refused."""
    arena = replace(REQUEST, adapter=red(models), arms=(False, True, True, False))
    assert GenerationRequest.from_dict(arena.to_dict()) == arena
    assert batch_key(arena) == "" and batch_key(replace(REQUEST, adapter=red(models))) != batch_key(REQUEST)
    assert arena.uses_adapter(1) and not arena.uses_adapter(0) and replace(arena, arms=()).uses_adapter(0)


def test_the_adapter_changes_images_and_the_base_comes_back_bit_identical(served: DiffusersGenerator,
                                                                          models: Path) -> None:
    """With the adapter the same seeds give other images; afterwards the base model's are unchanged."""
    base = served.generate(REQUEST)
    adapted = served.generate(replace(REQUEST, adapter=red(models)))
    assert all(a != b for a, b in zip(base.images, adapted.images, strict=True))
    assert adapted.extras["adapter"].startswith("red@sha256:")
    assert served.generate(REQUEST).images == base.images


def test_an_arena_request_puts_each_arm_in_its_positions(served: DiffusersGenerator, models: Path) -> None:
    """Arms (b, a, a, b) on seeds (3, 3, 4, 4): positions 1 and 4 are the base's, 2 and 3 the adapter's."""
    ref = red(models)
    arena = served.generate(replace(REQUEST, seeds=(3, 3, 4, 4), adapter=ref, arms=(False, True, True, False)))
    base = served.generate(replace(REQUEST, seeds=(3, 4)))
    adapted = served.generate(replace(REQUEST, seeds=(3, 4), adapter=ref))
    assert arena.images == (base.images[0], adapted.images[0], adapted.images[1], base.images[1])
    assert arena.seeds == (3, 3, 4, 4) and arena.extras["arms"] == "baab"


def test_an_arena_round_counts_progress_like_an_ordinary_round(served: DiffusersGenerator, models: Path) -> None:
    """Its two runs report "step x/N" with the N of an ordinary round of the same settings, never 2N, from 1/N
    to N/N without going back: a member watching progress cannot tell an arena round."""
    plain: list[tuple[int, int]] = []
    arena: list[tuple[int, int]] = []
    served.generate(REQUEST, lambda step, total: plain.append((step, total)))
    served.generate(replace(REQUEST, seeds=(3, 3, 4, 4), adapter=red(models), arms=(False, True, True, False)),
                    lambda step, total: arena.append((step, total)))
    assert {total for _, total in arena} == {total for _, total in plain} == {REQUEST.steps}
    assert arena[0] == plain[0] == (1, REQUEST.steps) and arena[-1] == plain[-1] == (REQUEST.steps, REQUEST.steps)
    assert [step for step, _ in arena] == sorted(step for step, _ in arena)


def test_missing_or_other_weights_are_refused_with_a_reason(served: DiffusersGenerator, models: Path) -> None:
    """A name not on this worker, or a sha256 that differs from the file's: AdapterUnavailable saying which."""
    with pytest.raises(AdapterUnavailable, match="`blue` is not on this worker"):
        served.generate(replace(REQUEST, adapter=AdapterRef("blue", "0" * 64)))
    with pytest.raises(AdapterUnavailable, match="other weights"):
        served.generate(replace(REQUEST, adapter=AdapterRef("red", "0" * 64)))
    with pytest.raises(ValueError, match="arms has 3 entries for 4 seeds"):
        served.generate(replace(REQUEST, adapter=red(models), arms=(True, False, True)))
    # Through Redis the refusal is stored with the outcome, and the bot raises the same type again.
    refused = outcome_error({"state": "failed", "error": "AdapterUnavailable: …",
                             "refusal": "adapter `red` here has other weights"})
    assert isinstance(refused, AdapterUnavailable) and str(refused) == "adapter `red` here has other weights"
    other = outcome_error({"state": "failed", "error": "RuntimeError: CUDA out of memory"})
    assert isinstance(other, RemoteGenerationError) and not isinstance(other, AdapterUnavailable)


def test_a_changed_weights_file_is_hashed_again(tmp_path: Path) -> None:
    """The sha256 is cached by size and modification time: a rewritten file is never answered from the cache."""
    import hashlib
    import os

    path = tmp_path / "pytorch_lora_weights.safetensors"
    path.write_bytes(b"first weights")
    assert file_sha256(path) == hashlib.sha256(b"first weights").hexdigest()
    path.write_bytes(b"other weights")  # same size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_sha256(path) == hashlib.sha256(b"other weights").hexdigest()


@pytest.mark.parametrize("damage", ["truncated", "random", "other-size"])
def test_a_broken_file_is_refused_with_the_reason_and_the_base_stays_whole(served: DiffusersGenerator,
                                                                           models: Path, damage: str) -> None:
    """A job naming a file that does not load (truncated, random bytes, layers of another size): AdapterUnavailable
    with the reason, which the user reads, instead of "Generation failed … try again"; the base model's images and
    the good adapter's stay as they were (#23.5)."""
    import os

    from safetensors.torch import load_file, save_file

    base, good = served.generate(REQUEST), served.generate(replace(REQUEST, adapter=red(models)))
    folder = models / f"broken-{damage}"
    folder.mkdir(exist_ok=True)
    whole = (models / "red" / "pytorch_lora_weights.safetensors").read_bytes()
    path = folder / "pytorch_lora_weights.safetensors"
    if damage == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(len(whole)))
    else:
        tensors = load_file(models / "red" / "pytorch_lora_weights.safetensors")
        save_file({name: t[:, :-1].contiguous() if ".down." in name else t for name, t in tensors.items()}, path)
    ref = AdapterRef(folder.name, file_sha256(path))
    with pytest.raises(AdapterUnavailable, match=f"adapter `{folder.name}` could not be loaded: ") as raised:
        served.generate(replace(REQUEST, adapter=ref))
    assert "\n" not in str(raised.value)
    assert served.generate(REQUEST).images == base.images
    assert served.generate(replace(REQUEST, adapter=red(models))).images == good.images
