"""A `GenerationRequest` as the keyword arguments of a diffusers pipeline call, and its checks."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from pipeline.masks import decode_image, normalise_mask
from pipeline.requests import GenerationRequest, Mode, ProgressCallback


def call_arguments(request: GenerationRequest, progress: ProgressCallback | None) -> dict[str, Any]:
    """The keyword arguments of the mode's pipeline call for `request` (checked by `check_request`).
    One CPU generator per candidate; `progress` becomes a `callback_on_step_end`."""
    kwargs: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "num_images_per_prompt": len(request.seeds),
        # One generator per candidate: candidate k depends on seed k alone, never on its neighbours.
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds],
        "output_type": "pil",
    }
    if progress is not None:
        kwargs["callback_on_step_end"] = _step_callback(progress)
    size = (request.width, request.height)
    if request.mode is Mode.TEXT:
        kwargs.update(width=request.width, height=request.height)
        return kwargs
    assert request.init_image is not None  # check_request
    init = decode_image(request.init_image, "init_image").convert("RGB")
    if init.size != size:
        # img2img and InstructPix2Pix make images the size of their input, so size it here.
        init = init.resize(size, Image.Resampling.LANCZOS)
    kwargs["image"] = init
    if request.mode is Mode.IMAGE:
        kwargs["strength"] = request.strength
    elif request.mode is Mode.INSTRUCT:
        # InstructPix2Pix deprecates (FutureWarning on every call) repeating one image for
        # num_images_per_prompt; n (prompt, image) pairs are the same work without it.
        count = len(request.seeds)
        kwargs.update(prompt=[request.prompt] * count, image=[init] * count, num_images_per_prompt=1)
        if request.negative_prompt:
            kwargs["negative_prompt"] = [request.negative_prompt] * count
        kwargs["image_guidance_scale"] = request.image_guidance
    else:
        assert request.mask_image is not None  # check_request
        mask = decode_image(normalise_mask(request.mask_image, size), "mask_image").convert("L")
        kwargs.update(
            mask_image=mask, strength=request.strength, width=request.width, height=request.height
        )
    return kwargs


def _step_callback(progress: ProgressCallback) -> Any:
    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # num_timesteps is set before the loop starts, so it is the real total for this mode.
        progress(step + 1, pipe.num_timesteps)
        return tensors

    return on_step_end


def check_request(request: GenerationRequest) -> None:
    """One ValueError per bad value, naming it; the service validates user input before this."""
    if not request.seeds:
        raise ValueError("seeds is empty: need one seed per candidate")
    for seed in request.seeds:
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed {seed} is outside 0..2**64-1")
    for name in ("width", "height"):
        value = getattr(request, name)
        if value <= 0 or value % 8:
            raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
    if request.steps < 1:
        raise ValueError(f"steps must be at least 1, got {request.steps}")
    if request.arms and len(request.arms) != len(request.seeds):
        raise ValueError(f"arms has {len(request.arms)} entries for {len(request.seeds)} seeds: one per candidate")
    if request.arms and request.adapter is None:
        raise ValueError("arms are given but no adapter: arms say which candidates use the adapter")
    if request.adapter is not None and not 0.0 <= request.adapter.weight <= 2.0:
        raise ValueError(f"adapter weight must be in [0, 2], got {request.adapter.weight}")
    if request.mode is not Mode.TEXT and request.init_image is None:
        raise ValueError(f"mode {request.mode.value} needs init_image")
    if request.mode is Mode.INPAINT and request.mask_image is None:
        raise ValueError("mode inpaint needs mask_image")
    if request.mode in (Mode.IMAGE, Mode.INPAINT):
        if not 0.0 < request.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {request.strength}")
        if int(request.steps * request.strength) < 1:
            raise ValueError(f"strength {request.strength} × steps {request.steps} leaves no denoising step")
