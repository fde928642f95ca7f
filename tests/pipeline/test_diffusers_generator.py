"""DiffusersGenerator on tiny random-weight checkpoints loaded from disk like real ones."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings, ModelNotConfigured
from pipeline.generator import BaseGenerator, Generator
from pipeline.queue import LocalQueue
from pipeline.requests import GenerationCancelled, GenerationRequest, Mode

SEEDS = (11, 22, 33, 44)


def request(**changes: object) -> GenerationRequest:
    base = GenerationRequest(prompt="a red fox 🦊", seeds=SEEDS, steps=4, guidance=7.5, width=64, height=64)
    return replace(base, **changes)  # type: ignore[arg-type]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def square_mask(size: tuple[int, int] = (64, 64)) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def test_loads_from_saved_folder(generator: DiffusersGenerator, settings: GeneratorSettings) -> None:
    """load() goes through from_pretrained on the folder and records what it loaded."""
    assert isinstance(generator, Generator)
    assert generator.model_id == Path(settings.model).name  # a local folder by its name, never its path
    assert not generator.model_id.startswith("/") and generator.model_revision.startswith("sha256:")
    assert generator.model_revision.startswith("sha256:")


@pytest.mark.parametrize(("width", "height"), [(64, 64), (64, 128)])
def test_text2img_one_png_per_seed(generator: DiffusersGenerator, width: int, height: int) -> None:
    """Text mode returns one PNG of the requested size per seed, with the seeds recorded."""
    result = generator.generate(request(width=width, height=height))
    assert result.seeds == SEEDS
    assert len(result.images) == 4
    for data in result.images:
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size) == ("PNG", (width, height))
    assert result.scheduler == "DDIMScheduler"
    assert result.model_revision == generator.model_revision
    assert result.extras["mode"] == "text2img"


def test_same_seeds_same_bytes_after_reload(
    generator: DiffusersGenerator, settings: GeneratorSettings
) -> None:
    """A second generator loaded from the same folder makes byte-identical PNGs."""
    again = DiffusersGenerator(settings).load()
    assert again.generate(request()).images == generator.generate(request()).images


def test_different_seeds_different_images(generator: DiffusersGenerator) -> None:
    """Every seed gives its own image, within a round and across rounds."""
    first = generator.generate(request()).images
    second = generator.generate(request(seeds=(55, 66, 77, 88))).images
    assert len(set(first) | set(second)) == 8


def test_progress_counts_real_steps(generator: DiffusersGenerator, init_png: bytes) -> None:
    """Progress is (1..N, N) with N the steps run: all for text, half for img2img at strength 0.5."""
    calls: list[tuple[int, int]] = []
    generator.generate(request(), lambda step, total: calls.append((step, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    calls.clear()
    generator.generate(
        request(mode=Mode.IMAGE, init_image=init_png, strength=0.5),
        lambda step, total: calls.append((step, total)),
    )
    assert calls == [(1, 2), (2, 2)]


def test_progress_total_under_checkpoint_scheduler(settings: GeneratorSettings) -> None:
    """SD 1.5's own PNDM runs steps + 1 UNet passes; progress reports that real total."""
    pndm = DiffusersGenerator(replace(settings, scheduler="default")).load()
    calls: list[tuple[int, int]] = []
    result = pndm.generate(request(seeds=(1,)), lambda step, total: calls.append((step, total)))
    assert result.scheduler == "PNDMScheduler"
    assert calls == [(step, 5) for step in range(1, 6)]


@pytest.mark.parametrize("mode", [Mode.IMAGE, Mode.INSTRUCT, Mode.INPAINT])
def test_edit_modes_one_image_per_seed(generator: DiffusersGenerator, mode: Mode) -> None:
    """Each edit mode makes 4 images of the requested size, whatever the init image's size."""
    init = Image.new("RGB", (80, 72), (200, 120, 40))
    buffer = io.BytesIO()
    init.save(buffer, format="PNG")
    result = generator.generate(
        request(
            mode=mode,
            width=64,
            height=96,
            init_image=buffer.getvalue(),
            mask_image=square_mask((80, 72)),
            strength=0.5,
        )
    )
    assert [Image.open(io.BytesIO(data)).size for data in result.images] == [(64, 96)] * 4
    assert result.extras["mode"] == mode.value


@pytest.mark.parametrize("which", ["nine_channel", "four_channel_fallback"])
def test_inpaint_keeps_outside_of_mask(
    generator: DiffusersGenerator, bare_generator: DiffusersGenerator, init_png: bytes, which: str
) -> None:
    """Outside the mask the result stays at the original; inside it is repainted."""
    chosen = generator if which == "nine_channel" else bare_generator
    result = chosen.generate(
        request(mode=Mode.INPAINT, init_image=init_png, mask_image=square_mask(), strength=1.0)
    )
    original = pixels(init_png)
    inside = np.zeros((64, 64), dtype=bool)
    inside[16:48, 16:48] = True
    for data in result.images:
        diff = np.abs(pixels(data) - original).mean(axis=2)
        assert diff[~inside].mean() < 1.0
        assert diff[inside].mean() > 10.0


def test_instruct_without_model_is_model_not_configured(
    bare_generator: DiffusersGenerator, init_png: bytes
) -> None:
    """With no instruct model the edit fails with a ValueError naming the missing setting."""
    with pytest.raises(ModelNotConfigured, match="instruct_model") as caught:
        bare_generator.generate(request(mode=Mode.INSTRUCT, init_image=init_png))
    assert isinstance(caught.value, ValueError)
    assert caught.value.setting == "instruct_model"


@pytest.mark.parametrize("mode", [Mode.TEXT, Mode.INSTRUCT])
def test_cancel_mid_run_then_next_run_is_unaffected(
    generator: DiffusersGenerator, init_png: bytes, mode: Mode
) -> None:
    """GenerationCancelled raised from progress stops the run; the next run is as if none happened."""
    job = request(mode=mode, init_image=init_png)
    before = generator.generate(job).images
    seen: list[int] = []

    def cancel_at_two(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            raise GenerationCancelled("job 7")

    with pytest.raises(GenerationCancelled):
        generator.generate(job, cancel_at_two)
    assert seen == [1, 2]
    assert generator.generate(job).images == before


def test_regenerate_matches_batched_candidate(generator: DiffusersGenerator) -> None:
    """Candidate k alone equals the batched candidate k within one grey level."""
    batched = generator.generate(request())
    alone = generator.regenerate(request(), 2)
    assert alone.seeds == (SEEDS[2],)
    assert np.abs(pixels(alone.images[0]) - pixels(batched.images[2])).max() <= 1


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"width": 60}, "width"),
        ({"height": 0}, "height"),
        ({"seeds": ()}, "seeds"),
        ({"mode": Mode.IMAGE}, "init_image"),
        ({"mode": Mode.IMAGE, "init_image": b"x", "strength": 0.1}, "strength"),
    ],
)
def test_rejects_bad_values(generator: DiffusersGenerator, changes: dict[str, object], named: str) -> None:
    """A bad request is a ValueError that names the bad field."""
    with pytest.raises(ValueError, match=named):
        generator.generate(request(**changes))


def test_bad_settings_are_rejected() -> None:
    """Unknown scheduler, device or dtype names fail when the settings are made."""
    for field, value in (("scheduler", "lms"), ("device", "tpu"), ("dtype", "int8")):
        with pytest.raises(ValueError, match=value):
            GeneratorSettings(model="x", **{field: value})  # type: ignore[arg-type]


def test_from_pipe_keeps_the_loaded_dtype(settings: GeneratorSettings) -> None:
    """Deriving the other modes must not cast the shared modules back to float32."""
    half = DiffusersGenerator(replace(settings, dtype="bfloat16")).load()
    for pipe in half._pipes.values():
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}


async def test_local_queue_batches_compatible_jobs_like_single_runs(generator: DiffusersGenerator) -> None:
    """Three compatible jobs waiting together run as ONE pipeline call; each job's images equal its
    own single run within 2/255, and an incompatible job runs on its own."""
    calls: list[int] = []

    class Counting(BaseGenerator):
        model_id = generator.model_id
        can_batch = True

        def generate(self, request, progress=None):
            calls.append(1)
            return generator.generate(request, progress)

        def generate_batch(self, requests, progress=None):
            calls.append(len(requests))
            return generator.generate_batch(requests, progress)

    def request(prompt: str, seed: int, steps: int = 3) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, seeds=(seed, seed + 1), steps=steps, guidance=5.0, width=64,
                                 height=64)

    queue = LocalQueue(Counting(), max_per_user=10, batch_size=4)
    requests = [request("a fox", 1), request("a cat", 10), request("an owl", 20), request("a fox", 1, steps=4)]
    jobs = [await queue.submit(r, user_id=k) for k, r in enumerate(requests)]
    await queue.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await queue.close()
    assert calls == [3, 1], "three compatible jobs in one call, the 4-step job alone"
    for req, batched in zip(requests[:3], results[:3], strict=True):
        alone = generator.generate(req)
        assert batched.seeds == req.seeds
        for a, b in zip(alone.images, batched.images, strict=True):
            left = np.asarray(Image.open(io.BytesIO(a)), dtype=np.int16)
            right = np.asarray(Image.open(io.BytesIO(b)), dtype=np.int16)
            assert np.abs(left - right).max() <= 2
