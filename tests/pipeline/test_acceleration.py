"""Speed-ups (pipeline/acceleration.py) on the tiny checkpoints: same images, fewer encoder calls.

Tolerance, optimised vs plain path for the same seeds, on CPU in float32 (PNG pixels, 0-255):
at most 2 levels on any value and under 0.1 % of values different at all. Measured with fused QKV +
channels_last: max 1, 0.006 % of values; with torch.compile added, the same (eager backend) and
max 1, 0.016 % (inductor). The prompt cache alone is bit-identical for single requests.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import FusedAttnProcessor2_0
from PIL import Image

from bot.app import generator_settings
from bot.config import Config, PerformanceConfig, QueueConfig
from pipeline.acceleration import Acceleration, resolve
from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings
from pipeline.requests import GenerationRequest, Mode

SEEDS = (11, 22, 33, 44)
MAX_LEVELS = 2  # largest allowed difference of one pixel value
MAX_DIFFERENT = 0.001  # largest allowed fraction of pixel values that differ at all
# Fused QKV and channels_last forced on for the CPU (they apply on CUDA only by default).
FAST = Acceleration(devices=("cpu",), compile="off")
PLAIN = Acceleration(channels_last=False, fuse_qkv=False, compile="off", prompt_cache_size=0)


def request(**changes: object) -> GenerationRequest:
    base = GenerationRequest(prompt="a red fox", seeds=SEEDS, steps=3, guidance=7.5, width=64, height=64)
    return replace(base, **changes)  # type: ignore[arg-type]


def pixels(images: tuple[bytes, ...]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16) for data in images])


def assert_close(got: tuple[bytes, ...], want: tuple[bytes, ...]) -> None:
    difference = np.abs(pixels(got) - pixels(want))
    assert difference.max() <= MAX_LEVELS, f"max difference {difference.max()}"
    assert (difference > 0).mean() < MAX_DIFFERENT, f"{(difference > 0).mean():.4%} of values differ"


def count_encoder_calls(generator: DiffusersGenerator) -> list[int]:
    """A one-element counter of text-encoder forward calls (every mode shares the encoder)."""
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    generator._pipes[Mode.TEXT].text_encoder.register_forward_hook(hook)
    return calls


@pytest.fixture(scope="module")
def plain(settings: GeneratorSettings) -> DiffusersGenerator:
    return DiffusersGenerator(replace(settings, acceleration=PLAIN)).load()


@pytest.fixture(scope="module")
def fast(settings: GeneratorSettings) -> DiffusersGenerator:
    return DiffusersGenerator(replace(settings, acceleration=FAST)).load()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A compile cache folder; the process-wide TORCHINDUCTOR_CACHE_DIR is put back afterwards."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "old")))
    yield tmp_path / "torch-cache"


def test_auto_is_off_on_cpu() -> None:
    """By default the layout and compile speed-ups apply on CUDA only; the prompt cache everywhere."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    on_cpu = resolve(Acceleration(), cpu)
    assert (on_cpu.channels_last, on_cpu.fuse_qkv, on_cpu.compile, on_cpu.prompt_cache) == (False, False, False, True)
    on_cuda = resolve(Acceleration(), cuda)
    assert (on_cuda.channels_last, on_cuda.fuse_qkv, on_cuda.compile) == (True, True, True)
    assert resolve(Acceleration(compile="on"), cpu).compile
    assert not resolve(Acceleration(compile="off"), cuda).compile
    assert not resolve(Acceleration(prompt_cache_size=0), cpu).prompt_cache


def test_bad_settings_name_the_value() -> None:
    """A bad compile choice or mode is refused with the value in the message."""
    with pytest.raises(ValueError, match="'sometimes'"):
        Acceleration(compile="sometimes")
    with pytest.raises(ValueError, match="'fastest'"):
        Acceleration(compile_mode="fastest")


def test_optimised_path_matches_plain(plain: DiffusersGenerator, fast: DiffusersGenerator, init_png: bytes) -> None:
    """Fused QKV + channels_last + prompt cache give the plain path's images within tolerance, in
    text and img2img modes, and reach every UNet: from_pipe modes share the fused modules."""
    pipes = fast._pipes
    assert pipes[Mode.IMAGE].unet is pipes[Mode.TEXT].unet
    for unet in (pipes[Mode.TEXT].unet, pipes[Mode.INPAINT].unet, pipes[Mode.INSTRUCT].unet):
        assert all(isinstance(p, FusedAttnProcessor2_0) for p in unet.attn_processors.values())
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain._pipes[Mode.TEXT].unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert_close(fast.generate(request()).images, plain.generate(request()).images)
    img2img = request(mode=Mode.IMAGE, init_image=init_png, strength=0.7, negative_prompt="blurry")
    assert_close(fast.generate(img2img).images, plain.generate(img2img).images)


def test_prompt_cache_skips_text_encoder(settings: GeneratorSettings, plain: DiffusersGenerator) -> None:
    """A repeated prompt runs no text encoder and gives the same bytes as the uncached path."""
    generator = DiffusersGenerator(replace(settings, acceleration=Acceleration(prompt_cache_size=4))).load()
    calls = count_encoder_calls(generator)
    first = generator.generate(request())
    assert calls[0] == 2  # prompt, and the empty negative prompt for classifier-free guidance
    again = generator.generate(request())
    assert calls[0] == 2
    assert first.images == again.images == plain.generate(request()).images
    generator.generate(request(guidance=1.0))  # no guidance: another key, and no negative pass
    assert calls[0] == 3
    assert generator.speedups.prompts is not None
    assert (generator.speedups.prompts.hits, generator.speedups.prompts.misses) == (1, 2)


def test_prompt_cache_evicts_least_recently_used(settings: GeneratorSettings) -> None:
    """With room for 2, a third prompt evicts the least recently used one, which then costs again."""
    generator = DiffusersGenerator(replace(settings, acceleration=Acceleration(prompt_cache_size=2))).load()
    calls = count_encoder_calls(generator)

    def encoder_calls(prompt: str) -> int:
        before = calls[0]
        generator.generate(request(prompt=prompt, seeds=(1,), steps=1))
        return calls[0] - before

    assert [encoder_calls(p) for p in ("a", "b", "a", "c")] == [2, 2, 0, 2]  # c evicts b (a was used)
    assert encoder_calls("a") == 0
    assert encoder_calls("b") == 2  # evicts c
    assert encoder_calls("c") == 2
    assert generator.speedups.prompts is not None and len(generator.speedups.prompts) == 2


def test_batch_with_cache_matches_single_runs(fast: DiffusersGenerator, plain: DiffusersGenerator) -> None:
    """Different prompts in one batched call, from the cache, match each request run alone; a
    prompt shared by two requests is encoded once."""
    requests = [request(prompt="a lighthouse at dusk", seeds=(1, 2)),
                request(prompt="a red fox", negative_prompt="blurry", seeds=(3, 4, 5)),
                request(prompt="a lighthouse at dusk", seeds=(6,))]
    generator = DiffusersGenerator(replace(fast.settings, acceleration=Acceleration(prompt_cache_size=8))).load()
    calls = count_encoder_calls(generator)
    batched = generator.generate_batch(requests)
    assert calls[0] == 4  # two distinct (prompt, negative) pairs, each with its negative pass
    for single, result in zip(requests, batched, strict=True):
        assert result.seeds == single.seeds
        assert_close(result.images, plain.generate(single).images)


def test_compile_wiring_and_warm_up(settings: GeneratorSettings, plain: DiffusersGenerator, cache_dir: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """compile="on" compiles every UNet and the VAE decoder in place, points inductor's caches at
    the configured folder, and warm_up runs the usual shape twice, timing it, so a user's job of
    that shape compiles nothing; the generator stays usable. (The eager backend runs dynamo's
    tracing without code generation: inductor takes ~65 s on the tiny model on 2 cores.)"""
    acceleration = Acceleration(devices=("cpu",), compile="on", compile_backend="eager",
                                compile_cache_dir=str(cache_dir), warmup_width=64, warmup_height=64,
                                warmup_count=2, warmup_batch=2, warmup_steps=2)
    generator = DiffusersGenerator(replace(settings, acceleration=acceleration)).load()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache_dir) and cache_dir.is_dir()
    pipes = generator._pipes
    for unet in (pipes[Mode.TEXT].unet, pipes[Mode.INPAINT].unet, pipes[Mode.INSTRUCT].unet):
        assert unet._compiled_call_impl is not None
    assert pipes[Mode.TEXT].vae.decoder._compiled_call_impl is not None
    caplog.set_level(logging.INFO, logger="pipeline.acceleration")

    def compile_notices(level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno >= level and "torch.compile included" in r.getMessage()]

    usual = request(seeds=(7, 8))
    assert generator.first_run_compiles([usual]), "before the warm-up the usual shape would compile"
    assert generator.warm_up() == generator.warmup_s
    assert generator.warmup_s is not None and generator.warm_s is not None
    assert generator.warmup_s > 0 and generator.warm_s > 0
    assert len(compile_notices()) == 2  # the single request and the batch of 2 each compiled once, in the warm-up
    assert not compile_notices(logging.WARNING)  # expected there: information, not a warning
    assert not generator.first_run_compiles([usual]) and generator.first_run_compiles([request(seeds=(9,))])
    assert_close(generator.generate(usual).images, plain.generate(usual).images)
    assert len(compile_notices()) == 2  # the warmed shape: no compile in the job
    generator.generate(request(seeds=(9,)))  # a new shape: compiles, and says so
    assert compile_notices(logging.WARNING) == compile_notices()[2:]
    assert len(compile_notices()) == 3 and "text2img run at 64x64, 1 image(s)" in compile_notices()[-1]
    assert not generator.first_run_compiles([request(seeds=(9,))])


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far: what really compiled, not what was predicted."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """No compiled code before or after: dynamo's caches and limits are per process, shared by every
    generator of the same architecture."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_shapes_past_recompile_limit_run_eagerly(settings: GeneratorSettings, plain: DiffusersGenerator,
                                                 init_png: bytes) -> None:
    """Past `recompile_limit` compiled shapes, new shapes and modes run eagerly: no error (fullgraph
    would raise FailOnRecompileLimitHit), the plain path's images, and no compile announced."""
    acceleration = Acceleration(devices=("cpu",), compile="on", compile_backend="eager", recompile_limit=1)
    generator = DiffusersGenerator(replace(settings, acceleration=acceleration)).load()
    runs = [request(seeds=(1, 2)), request(seeds=(3,)), request(seeds=(1, 2), guidance=1.0),
            request(mode=Mode.IMAGE, init_image=init_png, strength=0.7, seeds=(1, 2)),
            request(mode=Mode.INSTRUCT, init_image=init_png, seeds=(4,))]
    announced, compiled = [], []
    for run in runs:
        announced.append(generator.first_run_compiles([run]))
        before = compiled_graphs()
        assert_close(generator.generate(run).images, plain.generate(run).images)
        compiled.append(compiled_graphs() - before)
    assert compiled == [2, 0, 0, 0, 0]  # the UNet and the VAE decoder, once; then the limit
    assert announced == [True, False, False, False, False]


@pytest.mark.usefixtures("fresh_dynamo")
def test_img2img_at_a_text2img_shape_compiles_once(settings: GeneratorSettings, init_png: bytes) -> None:
    """img2img shares the text2img UNet but not its compiled code (its latents have other strides):
    at a size only text2img has run, its first run compiles and is announced, its second is not."""
    acceleration = Acceleration(devices=("cpu",), compile="on", compile_backend="eager")
    generator = DiffusersGenerator(replace(settings, acceleration=acceleration)).load()
    text = request(seeds=(1,))
    img2img = request(mode=Mode.IMAGE, init_image=init_png, strength=0.7, seeds=(1,))
    generator.generate(text)
    assert not generator.first_run_compiles([text])
    for expected in (True, False):
        assert generator.first_run_compiles([img2img]) is expected
        before = compiled_graphs()
        generator.generate(img2img)
        assert (compiled_graphs() > before) is expected


def test_warm_up_does_nothing_on_cpu_without_compile(fast: DiffusersGenerator) -> None:
    """Nothing compiles on CPU by default, so warm_up runs nothing and says so with None."""
    assert fast.warm_up() is None
    assert fast.warmup_s is None


def test_app_maps_performance_section(tmp_path: Path) -> None:
    """[performance] and the usual job shape reach the generator's settings."""
    config = Config(performance=PerformanceConfig(compile="on", compile_mode="reduce-overhead", fuse_qkv=False,
                                                  prompt_cache_size=9, warmup=False, recompile_limit=5),
                    queue=QueueConfig(batch_size=3), base_dir=tmp_path)
    acceleration = generator_settings(config).acceleration
    assert (acceleration.compile, acceleration.compile_mode, acceleration.fuse_qkv, acceleration.channels_last,
            acceleration.prompt_cache_size, acceleration.warmup) == ("on", "reduce-overhead", False, True, 9, False)
    assert acceleration.compile_cache_dir == str(config.compile_cache_path) and acceleration.recompile_limit == 5
    assert (acceleration.warmup_width, acceleration.warmup_height, acceleration.warmup_count,
            acceleration.warmup_batch) == (512, 512, 4, 3)
