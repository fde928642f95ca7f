"""The machine and the models: device and dtype, each configured model loading for real, trained adapters.

Models load on the CPU here, whatever the bot will use, so a doctor run beside a serving bot takes no
GPU memory; what differs on the GPU (the dtype) is checked on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from bot.config import Config
from bot.doctor._result import CheckResult, fail, first_line, ok, skip, warn
from pipeline.model_errors import DEFAULT_MODEL, ModelUnavailable, explained


def device_check(config: Config) -> CheckResult:
    """Where generation will run and in which dtype; a CPU works but is slow for a real model."""
    import torch

    name, model = "gpu", config.model
    cuda = torch.cuda.is_available()
    if model.device == "cuda" and not cuda:
        return fail(name, f"model.device = 'cuda' but torch sees no CUDA GPU (torch {torch.__version__}; a +cpu "
                          "build has none): install the CUDA build of torch, or set model.device = 'auto'")
    if model.device == "mps" and not torch.backends.mps.is_available():
        return fail(name, "model.device = 'mps' but this machine has no MPS device: set model.device = 'auto'")
    mps = torch.backends.mps.is_available()
    device = model.device if model.device != "auto" else "cuda" if cuda else "mps" if mps else "cpu"
    dtype = model.dtype if model.dtype != "auto" else "float16" if device == "cuda" else "float32"
    if device == "cpu" and dtype != "float32":
        return fail(name, f"model.dtype = {model.dtype!r} on the CPU: half precision is not supported by every "
                          "CPU kernel; use 'auto' (float32 on the CPU)")
    if device == "cuda":
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return fail(name, f"model.dtype = 'bfloat16' but {torch.cuda.get_device_name(0)} has no bfloat16: "
                              "use 'auto' (float16)")
        free, total = torch.cuda.mem_get_info(0)
        return ok(name, f"cuda: {torch.cuda.get_device_name(0)}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free, "
                        f"{dtype}")
    if device == "cpu":
        return warn(name, f"no GPU: generation runs on the CPU in {dtype} — minutes per round for a Stable "
                          "Diffusion 1.5-sized model (see the README's model section)")
    return ok(name, f"{device}, {dtype}")


def model_checks(config: Config) -> list[CheckResult]:
    """Each configured model through the loading code the bot uses; optional ones skipped when unset."""
    model, local = config.model, config.model.local_files_only
    results = [_timed("model", "model.id", model.id, local, lambda: _base(model.id, model.revision or None, local))]
    optional: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
        ("inpaint model", "model.inpaint_model", "inpainting uses the base model",
         lambda m: _unet(m, 9, local)),
        ("instruct model", "model.instruct_model", "'make it …' edits fall back to img2img and say so",
         lambda m: _unet(m, 8, local)),
        ("clipseg model", "model.clipseg_model", "'remove the dog' becomes img2img unless a mask image is attached",
         lambda m: _clipseg(m, local)),
        ("safety checker", "moderation.safety_checker", "only moderation.nsfw_words decide what is NSFW",
         lambda m: _safety(m, local)),
    )
    for name, key, without, load in optional:
        section, field = key.split(".")
        value = getattr(getattr(config, section), field)
        if not value:
            results.append(skip(name, f"{key} not set: {without}"))
        else:
            results.append(_timed(name, key, value, local, lambda value=value, load=load: load(value)))
    return results


def _timed(name: str, key: str, value: str, local: bool, load: Callable[[], Any]) -> CheckResult:
    started = time.perf_counter()
    try:
        with explained(key, value, local_files_only=local):
            what = load()
    except ModelUnavailable as error:
        return fail(name, str(error))
    except Exception as error:  # a broken checkpoint: one line, the doctor goes on
        return fail(name, f"{key} = {value!r} does not load: {first_line(error)}")
    note = " (the default; first start downloads it)" if value == DEFAULT_MODEL else ""
    return ok(name, f"{value}{note}: {what}, loaded in {time.perf_counter() - started:.1f} s")


def _base(model: str, revision: str | None, local: bool) -> str:
    from diffusers import StableDiffusionPipeline

    from pipeline.checkpoints import revision_of

    pipe = StableDiffusionPipeline.from_pretrained(model, revision=revision, local_files_only=local,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    params = sum(p.numel() for p in pipe.unet.parameters())
    del pipe
    return f"UNet {params / 1e6:.1f} M parameters, revision {revision_of(model, revision) or 'unknown'}"


def _unet(model: str, channels: int, local: bool) -> str:
    import torch

    from pipeline.checkpoints import load_unet

    unet = load_unet(model, dtype=torch.float32, local_files_only=local)
    if unet.config.in_channels != channels:
        raise ValueError(f"its UNet has {unet.config.in_channels} input channels; this mode needs {channels}")
    return f"UNet with {channels} input channels"


def _clipseg(model: str, local: bool) -> str:
    from pipeline.masks import ClipSegMasker

    ClipSegMasker(model, local_files_only=local)
    return "CLIPSeg"


def _safety(model: str, local: bool) -> str:
    from pipeline.safety import ImageSafetyChecker

    ImageSafetyChecker(model, local_files_only=local)
    return "StableDiffusionSafetyChecker"


def adapter_check(config: Config) -> CheckResult:
    """Every trained adapter under models_dir is readable; the configured ones exist."""
    from safetensors import safe_open

    from pipeline.adapters import LORA_FILE

    folder, name = config.models_path, "adapters"
    wanted = {a for a in (config.model.adapter, config.arena.adapter) if a}
    if not folder.is_dir():
        if wanted:
            return fail(name, f"{', '.join(sorted(wanted))} configured but {folder} does not exist")
        return skip(name, f"none trained yet ({folder}; `refinery train` writes them)")
    found, broken = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        weights = sub / LORA_FILE
        if not weights.is_file():
            continue  # a training run in progress or stopped before its first save
        try:
            with safe_open(str(weights), framework="pt") as handle:
                tensors = len(list(handle.keys()))
            if (sub / "training.json").is_file():
                json.loads((sub / "training.json").read_text(encoding="utf-8"))
        except Exception as error:
            broken.append(f"{sub.name} ({first_line(error)})")
            continue
        found.append(f"{sub.name} ({tensors} tensors)")
    absent = sorted(wanted - {f.split(" ")[0] for f in found})
    if broken or absent:
        parts = ([f"unreadable: {', '.join(broken)}"] if broken else []) + \
                ([f"configured but missing: {', '.join(absent)}"] if absent else [])
        return fail(name, f"{folder}: " + "; ".join(parts))
    return ok(name, f"{folder}: {', '.join(found)}" if found else f"{folder}: none trained yet")
