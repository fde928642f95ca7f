"""The settings `refinery train` uses when a flag is not given: the model's own, else SD 1.5's recipe.

A checkpoint folder may carry `refinery_train.json` (the toy model does: a 1 M-parameter UNet wants a
learning rate a hundred times SD 1.5's), and its native resolution follows from its configs (UNet
sample size × the VAE's downsampling), so a moderator's `refinery train --steps N` suits the model the
bot serves. A hub id carries no such file here: it gets the recipe below (diffusers' Diffusion-DPO
recipe for SD 1.5, with rank 8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRAIN_DEFAULTS_FILE = "refinery_train.json"
RECIPE: dict[str, Any] = {"lr": 1e-5, "rank": 8, "batch": 4, "beta": None, "resolution": 512}
KEYS = tuple(RECIPE)


def model_defaults(model: str | Path) -> dict[str, Any]:
    """Defaults for `KEYS` for `model` (a local folder or a hub id); ValueError for a bad defaults file."""
    defaults = dict(RECIPE)
    folder = Path(model)
    if not folder.is_dir():
        return defaults
    resolution = _native_resolution(folder)
    if resolution:
        defaults["resolution"] = resolution
    path = folder / TRAIN_DEFAULTS_FILE
    if path.is_file():
        try:
            carried = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        unknown = sorted(set(carried) - set(KEYS)) if isinstance(carried, dict) else ["(not an object)"]
        if unknown:
            raise ValueError(f"{path}: unknown training defaults {', '.join(unknown)} (known: {', '.join(KEYS)})")
        defaults.update(carried)
    return defaults


def _native_resolution(folder: Path) -> int | None:
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        size = unet["sample_size"]
        return int(size) * 2 ** (len(vae["block_out_channels"]) - 1) if isinstance(size, int) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
