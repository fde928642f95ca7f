"""The toy world: a small Stable Diffusion checkpoint that has really learned a world of coloured shapes,
and a simulated community with a taste. Learning features are tested on it (see README "The toy world").

- `world`: drawing scenes, their captions, and measuring any image's properties;
- `community`: voters with a taste (or none) who pick a candidate;
- `recipe` and `build`: how the checkpoint is trained (`refinery toy-model --rebuild`);
- `shipped`: the trained checkpoint in this package, checked against its manifest before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.toyworld.recipe import Recipe
from pipeline.toyworld.shipped import SHIPPED, ToyModelDamaged, copy_toy_model, write_manifest

# What `refinery train` uses on the toy model unless told otherwise (written into the checkpoint's
# refinery_train.json): measured so that `refinery train --steps 300` moves what the model draws toward
# a community's taste without collapsing its variety (README "The toy world").
TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-4, "rank": 4, "batch": 4}


def rebuild_toy_model(out: Path, *, progress: Any = None) -> float:
    """Train the toy model into `out` by the current recipe; its prompt-following on held-out captions."""
    from diffusers import StableDiffusionPipeline

    from pipeline.toyworld.build import build_toy_model, prompt_following

    build_toy_model(out, Recipe(), progress=progress)
    write_manifest(out, Recipe(), TRAIN_DEFAULTS)
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return prompt_following(pipe)


__all__ = ["SHIPPED", "TRAIN_DEFAULTS", "Recipe", "ToyModelDamaged", "copy_toy_model", "rebuild_toy_model"]
