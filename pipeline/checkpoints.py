"""Loading a bare UNet, and naming exactly what was loaded (snapshot commit or content digest)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")


def load_unet(model: str, *, dtype: torch.dtype, local_files_only: bool) -> Any:
    """A UNet from a whole checkpoint (its unet/ subfolder) or from a bare UNet folder or repo."""
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local_files_only}
    path = Path(model)
    if path.is_dir():
        subfolder = "unet" if (path / "unet" / "config.json").is_file() else None
        return UNet2DConditionModel.from_pretrained(model, subfolder=subfolder, **kwargs)
    try:
        return UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kwargs)
    except OSError:  # a repo holding only a UNet at its root
        return UNet2DConditionModel.from_pretrained(model, **kwargs)


def public_model_id(model: str) -> str:
    """How a round names its model: a hub id as given; a local folder by its name alone (the weights'
    digest is the round's model_revision), so the operator's paths never reach the log or an export."""
    path = Path(model).expanduser()
    if path.is_dir() or path.is_absolute():
        return path.resolve().name or "local-model"
    return model


def revision_of(model: str, revision: str | None = None) -> str:
    """What exactly was loaded: a snapshot commit, a content digest, or the revision as given."""
    path = Path(model)
    if path.is_dir():
        if path.parent.name == "snapshots" and _COMMIT.fullmatch(path.name):
            return path.name
        return "sha256:" + folder_digest(path)[:12]
    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model_index.json", "config.json"):
            cached = try_to_load_from_cache(model, filename, revision=revision)
            if isinstance(cached, str) and _COMMIT.fullmatch(Path(cached).parent.name):
                return Path(cached).parent.name
    except Exception:  # an odd cache layout must not stop a load that already succeeded
        log.debug("no cached snapshot for %s", model, exc_info=True)
    return revision or ""


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        # Dot-files are tool state (.cache/huggingface download metadata, build markers), not model.
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
