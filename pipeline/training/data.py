"""Votes → tensors: images encoded once into latents, captions once into embeddings, and sampling.

Datasets from a Discord community are small (hundreds to a few thousand images), so every latent and
caption embedding is computed once at start-up and kept on the training device: each step then only
indexes tensors. A PNG shared by several pairs (a round of four candidates gives up to six) is
encoded once.

Latents are the VAE posterior's mode, not a sample: cached once, a sample would be one fixed draw
anyway, and the mode keeps the cache independent of any random state (so a resumed run sees the same
latents). SD's posterior standard deviation is tiny next to the diffusion noise, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from storage.training_data import FeedbackImage, PreferencePair

Example = PreferencePair | FeedbackImage


@dataclass(frozen=True)
class EncodedExamples:
    """Examples as indices into cached latents and caption embeddings, all on the training device.

    `first` is the winner (DPO) or the image (KTO); `second` the loser (DPO only); `desirable` the
    label (KTO only).
    """

    latents: torch.Tensor  # [images, channels, h, w], float32, already × the VAE's scaling factor
    embeddings: torch.Tensor  # [captions, tokens, width], in the UNet's dtype
    caption: torch.Tensor  # [examples] long
    first: torch.Tensor  # [examples] long
    second: torch.Tensor | None
    desirable: torch.Tensor | None  # [examples] bool

    def __len__(self) -> int:
        return int(self.caption.shape[0])


def check_examples(examples: Sequence[Example], method: str, what: str) -> None:
    """ValueError unless every example has the method's type (pairs for DPO, images for KTO)."""
    wanted = PreferencePair if method == "dpo" else FeedbackImage
    for example in examples:
        if not isinstance(example, wanted):
            raise ValueError(f"{method} trains on {wanted.__name__} examples; {what} holds a "
                             f"{type(example).__name__}: {example!r}")


def fingerprint(train: Sequence[Example], held_out: Sequence[Example]) -> str:
    """A digest of both example lists, so a resumed run can tell that it is given the same data."""
    def rows(examples: Sequence[Example]) -> list[list[Any]]:
        return [[type(e).__name__, e.caption, str(e.winner), str(e.loser)] if isinstance(e, PreferencePair)
                else [type(e).__name__, e.caption, str(e.image), e.desirable] for e in examples]

    payload = json.dumps({"train": rows(train), "held_out": rows(held_out)}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def load_pixels(path: Path, resolution: int) -> torch.Tensor:
    """An image as a [3, resolution, resolution] tensor in [-1, 1]: RGB, centre-cropped square, resized."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_examples(pipe: Any, examples: Sequence[Example], resolution: int, *, chunk: int = 8
                    ) -> EncodedExamples:
    """Encode every distinct image and caption of `examples` once with the pipeline's VAE and text
    encoder (on the pipeline's device and dtype)."""
    images: dict[Path, int] = {}
    captions: dict[str, int] = {}
    caption, first, second, desirable = [], [], [], []
    for example in examples:
        caption.append(captions.setdefault(example.caption, len(captions)))
        if isinstance(example, PreferencePair):
            first.append(images.setdefault(Path(example.winner), len(images)))
            second.append(images.setdefault(Path(example.loser), len(images)))
        else:
            first.append(images.setdefault(Path(example.image), len(images)))
            desirable.append(example.desirable)
    device = pipe.unet.device
    return EncodedExamples(
        latents=_encode_images(pipe, list(images), resolution, chunk),
        embeddings=_encode_captions(pipe, list(captions), chunk),
        caption=torch.tensor(caption, dtype=torch.long, device=device),
        first=torch.tensor(first, dtype=torch.long, device=device),
        second=torch.tensor(second, dtype=torch.long, device=device) if second else None,
        desirable=torch.tensor(desirable, dtype=torch.bool, device=device) if desirable else None,
    )


def _encode_images(pipe: Any, paths: list[Path], resolution: int, chunk: int) -> torch.Tensor:
    vae = pipe.vae
    latents = []
    for start in range(0, len(paths), chunk):
        pixels = torch.stack([load_pixels(path, resolution) for path in paths[start:start + chunk]])
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        latents.append(posterior.mode().float() * vae.config.scaling_factor)
    return torch.cat(latents)


def _encode_captions(pipe: Any, captions: list[str], chunk: int) -> torch.Tensor:
    # As StableDiffusionPipeline.encode_prompt does for a prompt: padded to the tokenizer's length.
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    embeddings = []
    for start in range(0, len(captions), chunk):
        tokens = tokenizer(captions[start:start + chunk], padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(text_encoder.device) if use_mask else None
        embeddings.append(text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=mask)[0])
    return torch.cat(embeddings).to(pipe.unet.dtype)


def sample_indices(examples: EncodedExamples, size: int, generator: torch.Generator, *, balanced: bool
                   ) -> torch.Tensor:
    """`size` example indices drawn with `generator` (a CPU generator, so CPU and GPU runs draw alike).

    Without `balanced`: distinct examples when there are enough (a random subset), else with
    repetition. With `balanced` (KTO): the slots alternate between desirable and undesirable examples,
    starting from a random class, so both are seen equally often whatever the class sizes; a dataset
    with a single class is sampled as it is.
    """
    if not balanced or examples.desirable is None:
        return _draw(torch.arange(len(examples)), size, generator)
    labels = examples.desirable.cpu()
    classes = [torch.nonzero(labels).flatten(), torch.nonzero(~labels).flatten()]
    if min(len(c) for c in classes) == 0:
        return _draw(torch.arange(len(examples)), size, generator)
    start = int(torch.randint(2, (1,), generator=generator))
    counts = [(size + (start == k)) // 2 if size % 2 else size // 2 for k in (0, 1)]
    drawn = [_draw(c, n, generator) for c, n in zip(classes, counts, strict=True)]
    order = [drawn[(start + slot) % 2][slot // 2] for slot in range(size)]
    return torch.stack(order)


def _draw(pool: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    if len(pool) >= size:
        return pool[torch.randperm(len(pool), generator=generator)[:size]]
    return pool[torch.randint(len(pool), (size,), generator=generator)]
