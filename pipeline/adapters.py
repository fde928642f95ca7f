"""LoRA adapters trained by `refinery train`, served by the generator: loaded once, switched per run.

An adapter lives in `<models_dir>/<name>/pytorch_lora_weights.safetensors` (diffusers' LoRA format).
A request names it with the sha256 of that file (`AdapterRef`); the file is hashed when it is loaded
and again whenever it changes on disk, and a request whose hash differs is refused with
`AdapterUnavailable`, whose message the user sees: a worker never generates with weights other than
the ones the job asked for.

A file that does not load (truncated, random bytes, layers of another size) is refused the same way, with
the reason, and whatever a failed load added to the UNet is taken out again. (The bot load-checks a file's
header before a moderator can choose it; this catches what a header cannot show, and adapters chosen
before that check existed.)

Several adapters can stay loaded (diffusers' PEFT integration keeps them side by side in the UNet);
switching is `set_adapters`, and the base model is `disable_adapters`, both cheap. The img2img and
inpainting pipelines share the text pipeline's UNet (`from_pipe`), so they see the same adapter.
Speed-ups: fused QKV projections replace `to_q/to_k/to_v`, which LoRA targets, so they are undone
before the first adapter loads (logged). A compiled UNet recompiles when an adapter is first loaded
or the set of active adapters changes (dynamo guards on the modules): slower once, never an error.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

from pipeline.adapter_check import check_adapter
from pipeline.requests import AdapterRef

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"


class AdapterUnavailable(Exception):
    """This worker cannot generate with the adapter a job names (missing, or other weights)."""


def adapter_file(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / name / LORA_FILE


def file_sha256(path: Path) -> str:
    """The file's sha256, read again only when its size or modification time changed: `/model list`, the
    dashboard and every job's check ask often, an adapter changes rarely."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime are the cache key
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class LoadedAdapters:
    """The adapters loaded into one pipeline's UNet, and which one is active. Not thread-safe: the
    generator calls `activate` under its run lock, right before the pipeline call it applies to."""

    def __init__(self, pipe: Any, models_dir: Path | None) -> None:
        self.pipe, self.models_dir = pipe, models_dir
        self.loaded: dict[str, str] = {}  # name → sha256 of the loaded weights

    def sha256_of(self, name: str) -> str:
        """The sha256 of `name`'s weights file as it is on disk now (raises AdapterUnavailable)."""
        if self.models_dir is None:
            raise AdapterUnavailable(f"adapter `{name}` cannot be used here: this worker has no models folder")
        path = adapter_file(self.models_dir, name)
        try:
            return file_sha256(path)
        except FileNotFoundError:
            raise AdapterUnavailable(f"adapter `{name}` is not on this worker ({path} is missing): copy the "
                                     "models folder to it, or use the adapter where it was trained") from None

    def activate(self, ref: AdapterRef | None) -> None:
        """Make the next run use `ref`'s weights (loading them if needed), or the base model for None."""
        unet = self.pipe.unet
        if ref is None:
            if self.loaded:
                unet.disable_adapters()
            return
        found = self.sha256_of(ref.name)
        if found != ref.sha256:
            raise AdapterUnavailable(f"adapter `{ref.name}` here has other weights (sha256 {found[:12]}…) than "
                                     f"the job asks for ({ref.sha256[:12]}…): refusing rather than generating "
                                     "with the wrong ones")
        if self.loaded.get(ref.name) != found:
            self._load(ref.name, found)
        unet.enable_adapters()
        unet.set_adapters([ref.name], weights=[ref.weight])

    def _load(self, name: str, sha256: str) -> None:
        unet = self.pipe.unet
        if getattr(unet, "original_attn_processors", None) is not None:
            # fuse_qkv_projections replaced to_q/to_k/to_v by one to_qkv: LoRA needs them apart.
            log.warning("unfusing the UNet's QKV projections: LoRA adapters target to_q, to_k and to_v")
            unet.unfuse_qkv_projections()
        if name in self.loaded:  # the file changed since: drop the old weights first
            unet.delete_adapters([name])
            del self.loaded[name]
        assert self.models_dir is not None  # sha256_of checked it
        try:
            check_adapter(adapter_file(self.models_dir, name))  # the header: a clearer reason than the loader's
            self.pipe.load_lora_weights(str(self.models_dir / name), weight_name=LORA_FILE, adapter_name=name)
        except Exception as error:  # BrokenAdapter, or what only a real load sees (layer sizes, dtypes)
            # A load that failed half-way may have added some layers: take them out, so the base model and
            # the other adapters generate as before.
            with contextlib.suppress(Exception):
                unet.delete_adapters([name])
            reason = " ".join(line.strip() for line in str(error).splitlines()[:2] if line.strip())
            reason = reason if len(reason) <= 300 else reason[:299] + "…"
            raise AdapterUnavailable(f"adapter `{name}` could not be loaded: {reason or type(error).__name__}; "
                                     "a moderator can switch it off with `/model off`") from error
        self.loaded[name] = sha256
        log.info("loaded adapter %s (sha256 %s)", name, sha256[:12])
