"""A model that does not load, as one line that names the setting and says what to do.

diffusers and transformers report a model missing from the Hugging Face cache on a machine without hub
access as a long chain of tracebacks ending in "pass local_files_only=False" — advice that does not
apply. `model_unavailable` turns such a failure into `ModelUnavailable`, whose message is the whole
story: which config key, which model, why, and the command or setting that fixes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# What the default checkpoint downloads (diffusers' float32 safetensors of the unet, text_encoder and
# vae folders; the safety_checker folder is skipped because the pipeline is loaded without it).
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_MODEL_DOWNLOAD = "about 4.3 GB"


class ModelUnavailable(RuntimeError):
    """A configured model could not be loaded. `setting` is its config key (e.g. `model.id`)."""

    def __init__(self, setting: str, model: str, reason: str) -> None:
        super().__init__(f"{setting} = {model!r}: {reason}")
        self.setting = setting
        self.model = model
        self.reason = reason


def looks_like_path(model: str) -> bool:
    """A local folder rather than a hub id (`org/name`): absolute, relative with ./ or ~, or present."""
    return model.startswith(("/", "./", "../", "~", ".\\")) or Path(model).expanduser().exists()


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/...)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def model_unavailable(setting: str, model: str, error: BaseException, *, local_files_only: bool) -> ModelUnavailable:
    """The one-line explanation of why `model` (the value of `setting`) did not load."""
    names = {type(e).__name__ for e in _chain(error)}
    text = " ".join(str(e) for e in _chain(error))
    if looks_like_path(model):
        folder = Path(model).expanduser()
        if not folder.exists():
            return ModelUnavailable(setting, model, "no such folder (give a folder saved with save_pretrained, "
                                                    "or a Hugging Face hub id such as org/name)")
        return ModelUnavailable(setting, model, f"the folder does not load as this model ({_first_line(error)}); "
                                                "it must be laid out by save_pretrained")
    if names & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return ModelUnavailable(setting, model, "the hub has no such model (or revision), or it is gated: check the "
                                                "id, and for a gated model accept its licence and run `hf auth login`")
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"} or "cached" in text or "connect" in text.lower():
        why = "local_files_only = true" if local_files_only else "the hub cannot be reached from here"
        size = f", {DEFAULT_MODEL_DOWNLOAD}" if model == DEFAULT_MODEL else ""
        return ModelUnavailable(
            setting, model,
            f"not in the Hugging Face cache ({hub_cache_dir()}) and {why}. Fetch it once where the hub is "
            f"reachable (`hf download {model}`{size}; copy that cache here, or set HF_HOME to it), or set "
            f"{setting} to a local folder saved with save_pretrained")
    return ModelUnavailable(setting, model, f"does not load: {_first_line(error)}")


@contextlib.contextmanager
def explained(setting: str, model: str, *, local_files_only: bool) -> Iterator[None]:
    """Turn a failed load of `model` inside the block into ModelUnavailable (the cause kept for debug logs)."""
    try:
        yield
    except ModelUnavailable:
        raise
    except (OSError, ValueError) as error:  # HF's cache, network, repo-id and layout errors are these
        raise model_unavailable(setting, model, error, local_files_only=local_files_only) from error


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "…"
