"""Whether an adapter file can be served, read from safetensors headers alone: no torch, no weights loaded.

A moderator's `/model use` (and `[model] adapter` at start-up) must refuse a file the generator would
fail to load, with the reason, rather than let every later round fail. `check_adapter` raises
`BrokenAdapter` when the file

- is not a whole safetensors file (truncated, random bytes, empty: safetensors checks that the header
  parses and that its tensors cover the file exactly),
- holds no LoRA weights (no key with "lora" in it),
- pairs its LoRA matrices badly (a `down`/`A` without its `up`/`B`, or ranks that differ), or
- names a UNet layer the base model does not have, or one of another size (trained for another model).

The last check needs the base UNet's shapes, which `unet_shapes` reads from the header of the model's
`unet/*.safetensors` (a local folder, or the Hugging Face cache for a hub id); where they cannot be read it
is skipped. Keys in formats other than diffusers' and peft's (`<layer>.lora.down.weight`,
`<layer>.lora_A.weight`, optionally prefixed `unet.`) are only required to parse: diffusers converts them
when it loads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

Shape = tuple[int, ...]

# diffusers' and peft's LoRA keys: [unet.][base_model.model.]<layer>.lora.down|up.weight or ….lora_A|B.weight
_LORA_KEY = re.compile(r"^(?:unet\.)?(?:base_model\.model\.)?(?P<layer>.+?)\."
                       r"(?:lora\.(?P<du>down|up)|lora_(?P<ab>[AB]))\.weight$")


class BrokenAdapter(ValueError):
    """The adapter file cannot be loaded into the base model; the message says why in one line."""


def check_adapter(path: Path, base: Mapping[str, Shape] | None = None) -> int:
    """Raise BrokenAdapter unless `path` is a LoRA file that fits `base` (UNet weight name → shape, None
    to skip that part); the number of LoRA layers it holds."""
    from safetensors import SafetensorError

    try:
        shapes = header_shapes(Path(path))
    except (SafetensorError, OSError) as error:
        raise BrokenAdapter(f"{Path(path).name} is not a whole safetensors file ({error}): truncated or "
                            "overwritten") from None
    if not any("lora" in key.lower() for key in shapes):
        raise BrokenAdapter(f"{Path(path).name} holds no LoRA weights ({len(shapes)} tensors, none named "
                            "'lora'): it is not an adapter")
    layers: dict[str, dict[str, Shape]] = {}
    for key, shape in shapes.items():
        if key.startswith("text_encoder"):
            continue  # the text encoder's layers: loaded as they come
        match = _LORA_KEY.match(key)
        if match:
            side = "down" if (match["du"] or match["ab"]) in ("down", "A") else "up"
            layers.setdefault(match["layer"], {})[side] = shape
    for layer, pair in layers.items():
        _check_pair(layer, pair, base)
    return len(layers)


def _check_pair(layer: str, pair: Mapping[str, Shape], base: Mapping[str, Shape] | None) -> None:
    down, up = pair.get("down"), pair.get("up")
    if down is None or up is None or len(down) < 2 or len(up) < 2:
        raise BrokenAdapter(f"layer {layer} has LoRA matrices {dict(pair)}: a down (A) and an up (B) matrix are "
                            "needed, each at least 2-D")
    if down[0] != up[1]:
        raise BrokenAdapter(f"layer {layer} has rank {down[0]} in its down matrix but {up[1]} in its up matrix")
    if base is None:
        return
    weight = base.get(f"{layer}.weight")
    if weight is None:
        raise BrokenAdapter(f"layer {layer} is not in the base model's UNet: the adapter was trained for another "
                            "model")
    if len(weight) < 2 or (up[0], down[1]) != (weight[0], weight[1]):
        raise BrokenAdapter(f"layer {layer} maps {down[1]} → {up[0]} features in the adapter but {weight[1]} → "
                            f"{weight[0]} in the base model's UNet: the adapter was trained for another model")


def unet_shapes(model: str | Path) -> dict[str, Shape] | None:
    """Weight name → shape of the base model's UNet, from its safetensors headers; None when the model is
    neither a local folder nor in the Hugging Face cache, or keeps its UNet in another format."""
    from safetensors import SafetensorError

    folder = _local_folder(model)
    files = sorted((folder / "unet").glob("*.safetensors")) if folder else []
    if not files:
        return None
    # A folder may hold the full and an fp16 variant: the shapes are the same, one file (or its shards) is enough.
    full = [f for f in files if ".fp16." not in f.name] or files
    shapes: dict[str, Shape] = {}
    try:
        for file in full:
            shapes.update(header_shapes(file))
    except (SafetensorError, OSError):
        return None  # the generator will say what is wrong with the model itself
    return shapes


def header_shapes(path: Path) -> dict[str, Shape]:
    """Tensor name → shape from a safetensors header (SafetensorError unless the file is whole)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (no dict)


def _local_folder(model: str | Path) -> Path | None:
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), allow_patterns=["unet/*"], local_files_only=True))
    except Exception:  # not cached, not a hub id, no huggingface_hub: the shapes are simply unknown
        return None
