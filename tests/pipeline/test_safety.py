"""The image safety checker: a tiny StableDiffusionSafetyChecker loaded from disk, alone and in the generator."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessor

from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings
from pipeline.requests import GenerationRequest, GenerationResult, Mode
from pipeline.safety import ImageSafetyChecker
from pipeline.tiny import SAFETY_REFERENCE, SAFETY_THRESHOLD, SafetyVerdict, build_tiny_safety_checker

SEEDS = (11, 22, 33)


@pytest.fixture(scope="module")
def checkers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    verdicts: tuple[SafetyVerdict, ...] = ("red", "all", "none")
    return {flags: build_tiny_safety_checker(root / flags, flags=flags) for flags in verdicts}


@pytest.fixture(scope="module")
def red_checker(checkers: dict[str, Path]) -> ImageSafetyChecker:
    return ImageSafetyChecker(str(checkers["red"]), local_files_only=True)


@pytest.fixture(scope="module")
def checked_generator(settings: GeneratorSettings, checkers: dict[str, Path]) -> DiffusersGenerator:
    """The base checkpoint alone, with the "red" checker."""
    bare = replace(settings, inpaint_model=None, instruct_model=None, clipseg_model=None)
    return DiffusersGenerator(replace(bare, safety_checker=str(checkers["red"]))).load()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_tiny_checker_round_trips_through_from_pretrained(checkers: dict[str, Path]) -> None:
    """Every weight saved is loaded back (none missing or fresh), thresholds and 32 px processor included."""
    folder = checkers["red"]
    checker, info = StableDiffusionSafetyChecker.from_pretrained(folder, local_files_only=True,
                                                                 output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert checker.concept_embeds_weights[0].item() == pytest.approx(SAFETY_THRESHOLD)
    assert checker.concept_embeds_weights[1:].min().item() == 2.0
    assert checker.special_care_embeds_weights.min().item() == 2.0
    processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    assert processor.crop_size == {"height": 32, "width": 32}
    assert json.loads((folder / "config.json").read_text())["vision_config"]["image_size"] == 32


def test_flags_the_reference_and_near_copies_only(red_checker: ImageSafetyChecker) -> None:
    """Solid red, another red shade and noisy red are flagged; blue, green and noise are not."""
    red = solid(SAFETY_REFERENCE)
    noisy_red = np.asarray(red, dtype=np.int16) + np.random.default_rng(0).integers(-20, 21, (64, 64, 3))
    images = [
        red,
        solid((235, 15, 10), size=(96, 48)),  # another shade, another shape
        Image.fromarray(np.clip(noisy_red, 0, 255).astype(np.uint8)),
        solid((0, 0, 255)),
        solid((0, 255, 0)),
        noise(1),
    ]
    before = [image.tobytes() for image in images]
    assert red_checker.check(images) == (True, True, True, False, False, False)
    assert [image.tobytes() for image in images] == before  # flags only: nothing blacked out
    assert red_checker.check([]) == ()


def test_no_black_image_warning(red_checker: ImageSafetyChecker, caplog: pytest.LogCaptureFixture) -> None:
    """diffusers' "a black image will be returned" warning is dropped: we never black anything out."""
    checker_log = logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker")
    checker_log.addHandler(caplog.handler)  # diffusers' loggers do not propagate to the root
    try:
        assert red_checker.check([solid(SAFETY_REFERENCE)]) == (True,)
    finally:
        checker_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "black image" in r.getMessage()]


@pytest.mark.parametrize(("flags", "expected"), [("all", True), ("none", False)])
def test_all_and_none_checkers(checkers: dict[str, Path], flags: str, expected: bool) -> None:
    """The "all" checker flags every image, the "none" checker none, the reference included."""
    checker = ImageSafetyChecker(str(checkers[flags]), local_files_only=True)
    images = [solid(SAFETY_REFERENCE), solid((0, 0, 255)), noise(2)]
    assert checker.check(images) == (expected,) * 3


def test_generator_flags_each_candidate(checked_generator: DiffusersGenerator) -> None:
    """Inpainting a small corner keeps the rest of the init image: red rounds are flagged, blue ones not."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 8, 8))
    base = GenerationRequest(prompt="a fox", seeds=SEEDS, steps=2, guidance=7.5, width=64, height=64,
                             mode=Mode.INPAINT, strength=1.0, mask_image=png(mask))
    red = checked_generator.generate(replace(base, init_image=png(solid(SAFETY_REFERENCE))))
    blue = checked_generator.generate(replace(base, init_image=png(solid((0, 0, 255)))))
    assert red.nsfw == (True, True, True)
    assert blue.nsfw == (False, False, False)


class PatternChecker:
    """A stand-in safety checker: flags images by position with a fixed pattern, counting its calls."""

    def __init__(self, pattern: tuple[bool, ...]) -> None:
        self.pattern = pattern
        self.calls: list[int] = []

    def check(self, images: list[Image.Image]) -> tuple[bool, ...]:
        self.calls.append(len(images))
        return self.pattern[: len(images)]


def test_generator_batch_has_flags_per_request(checked_generator: DiffusersGenerator,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """generate_batch checks once and gives each result the flags of its own candidates, in order."""
    checker = PatternChecker((False, True, False, True))  # the last differs from the first
    monkeypatch.setattr(checked_generator, "_safety", checker)
    first = GenerationRequest(prompt="a fox", seeds=SEEDS, steps=2, guidance=7.5, width=64, height=64)
    second = replace(first, prompt="a cat", seeds=(44,))
    results = checked_generator.generate_batch([first, second])
    assert checker.calls == [4]
    assert [r.nsfw for r in results] == [(False, True, False), (True,)]


def test_generator_without_checker_reports_unchecked(bare_generator: DiffusersGenerator) -> None:
    """No safety checker configured: nsfw is () (not checked), not a row of False."""
    request = GenerationRequest(prompt="a fox", seeds=SEEDS, steps=2, guidance=7.5, width=64, height=64)
    assert bare_generator.generate(request).nsfw == ()


def test_result_nsfw_survives_json_and_old_dicts_load() -> None:
    """nsfw goes through to_dict/from_dict; a dict from an older worker, without it, loads as ()."""
    result = GenerationResult(images=(b"a", b"b"), seeds=(1, 2), model_id="m", scheduler="DDIMScheduler",
                              elapsed_s=0.5, nsfw=(True, False))
    assert GenerationResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    old = result.to_dict()
    del old["nsfw"]
    assert GenerationResult.from_dict(old).nsfw == ()
