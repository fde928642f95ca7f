"""How the toy model is built: every number that decides its weights, and a hash of them.

The shipped checkpoint records the hash of the recipe that made it; a test recomputes the hash, so a
change to the recipe without a rebuild (or a rebuild without the recipe) does not go unnoticed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from pipeline.toyworld import world


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    resolution: int = 64
    # VAE: factor 8 like Stable Diffusion (64 px → 8×8×4 latents); one GroupNorm group, because one
    # channel per group erases flat colours (shared/notes/training.md).
    vae_channels: tuple[int, ...] = (16, 32, 32, 32)
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_shape_weight: float = 10.0  # the shape's pixels count this much more (see build._reconstruction_loss)
    # Text encoder: one token per caption word, 2 layers of width 64, trained with the UNet.
    text_hidden: int = 64
    text_layers: int = 2
    max_tokens: int = 16
    # UNet: cross-attention at both levels of an 8×8 latent.
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_stages: tuple[int, ...] = (6000,)  # optimizer steps per stage (see build.py)
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    empty_caption_share: float = 0.1  # trains the unconditional branch classifier-free guidance needs
    dataset_size: int = 24000  # scenes drawn and encoded once, then sampled with replacement

    def digest(self) -> str:
        """sha256 of the recipe and of the world it draws (the palette, shapes and held-out set)."""
        payload = {
            "recipe": asdict(self),
            "world": {
                "shapes": world.SHAPES,
                "colours": world.COLOURS,
                "backgrounds": world.BACKGROUNDS,
                "held_out": sorted(world.HELD_OUT),
                "size": world.SIZE_RANGE,
                "shade": world.SHADE_RANGE,
            },
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def caption_words() -> list[str]:
    """Every word a caption can hold: each becomes a single token of the toy tokenizer."""
    words = {"a", "on", "background", *world.SHAPES, *world.COLOURS, *world.BACKGROUNDS}
    return sorted(words)
