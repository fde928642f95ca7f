"""Flags images with diffusers' StableDiffusionSafetyChecker, without altering them.

The checker is a CLIP vision tower plus fixed concept embeddings, loaded from a hub id or a folder
laid out like CompVis/stable-diffusion-safety-checker: the checker's `config.json` (a CLIPConfig)
and weights, and `preprocessor_config.json` (the CLIPImageProcessor that turns images into its input)
side by side in one folder.

What `StableDiffusionSafetyChecker.forward(clip_input, images)` computes (diffusers 0.42, read from
its source):

- `image_embeds = visual_projection(vision_model(clip_input).pooler_output)`, one per image;
- the cosine similarity (the function is called `cosine_distance`, but it is a similarity) of each
  embedding with the 3 `special_care_embeds` and the 17 `concept_embeds`;
- score = round(similarity - weight + adjustment, 3), with the weights `special_care_embeds_weights`
  and `concept_embeds_weights` acting as per-concept thresholds. `adjustment` starts at 0.0 and
  becomes 0.01 for the rest of that image once a special-care concept scores above 0: special care
  alone never flags an image, it only makes the concept test stricter;
- an image is flagged (`has_nsfw_concepts[i]`) when any of the 17 concept scores is above 0.

It returns `(images, has_nsfw_concepts)`, a list of Python bools, and it *replaces each flagged
entry of `images` with zeros in place* (the pipelines' black-out) and logs a warning saying that a
black image will be returned. We want flags only — the bot decides between a spoiler and a refusal —
so `check` passes a throwaway tensor as `images` and drops that warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessor

log = logging.getLogger(__name__)

_CHECKER_LOGGER = "diffusers.pipelines.stable_diffusion.safety_checker"


class _NoBlackOutWarning(logging.Filter):
    """Drops the checker's "A black image will be returned instead": we never black anything out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "black image" not in record.getMessage()


class ImageSafetyChecker:
    """One verdict per image from a StableDiffusionSafetyChecker: True = flagged as NSFW.

    Loads once in the constructor (a bad model fails at start-up); `check` is blocking, so call it
    from the worker thread. The images are never changed.
    """

    def __init__(
        self,
        model: str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool = False,
    ) -> None:
        started = time.perf_counter()
        self.model_id = model
        self.device = torch.device(device)
        self.dtype = dtype
        self._processor: Any = CLIPImageProcessor.from_pretrained(model, local_files_only=local_files_only)
        checker = StableDiffusionSafetyChecker.from_pretrained(
            model, dtype=dtype, local_files_only=local_files_only
        )
        self._checker: Any = checker.to(self.device).eval()
        checker_log = logging.getLogger(_CHECKER_LOGGER)
        if not any(isinstance(f, _NoBlackOutWarning) for f in checker_log.filters):
            checker_log.addFilter(_NoBlackOutWarning())
        log.info("loaded safety checker %s on %s/%s in %.2f s", model, self.device, dtype,
                 time.perf_counter() - started)

    def check(self, images: Sequence[Image.Image]) -> tuple[bool, ...]:
        """One flag per image, in order, from one checker call; `()` for no images."""
        if not images:
            return ()
        inputs = self._processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        clip_input = inputs.pixel_values.to(self.device, self.dtype)
        # `images` is only there to be blacked out; a throwaway placeholder keeps ours untouched.
        placeholder = torch.zeros(len(images))
        _, flags = self._checker(clip_input=clip_input, images=placeholder)
        verdicts = tuple(bool(flag) for flag in flags)
        log.debug("safety check of %d images: %s", len(images), verdicts)
        return verdicts
