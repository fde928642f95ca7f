"""Frozen requests and results that cross from the conversation core to the GPU worker.

They carry only plain data (str, int, float, bytes) so that they can be serialised with
`to_dict`/`from_dict` for another process (the Redis worker) or a file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

MAX_SEED = 2**32 - 1  # seeds are 32-bit, like torch.Generator.manual_seed's portable range


def consecutive_seeds(first: int, count: int) -> tuple[int, ...]:
    """One seed per candidate, counting up from `first` and wrapping at 32 bits, so every candidate
    has its own seed and can be regenerated on its own."""
    return tuple((first + k) % (MAX_SEED + 1) for k in range(count))


class Mode(StrEnum):
    """How the four candidates are made."""

    TEXT = "text2img"
    IMAGE = "img2img"  # conditioning + img2img from a chosen candidate
    INSTRUCT = "instruct"  # InstructPix2Pix edit of a chosen candidate
    INPAINT = "inpaint"  # repaint the white area of a mask on a chosen candidate


@dataclass(frozen=True)
class AdapterRef:
    """A trained LoRA adapter by name and the sha256 of its weights file: a worker generates with exactly
    these weights or refuses the job (never silently with others)."""

    name: str
    sha256: str
    weight: float = 1.0

    @property
    def label(self) -> str:
        """How rounds and exports name it: `name@sha256:<12 hex>`."""
        return f"{self.name}@sha256:{self.sha256[:12]}"


@dataclass(frozen=True)
class GenerationRequest:
    """Everything a pipeline needs to make one round of candidates."""

    prompt: str
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    width: int
    height: int
    negative_prompt: str = ""
    mode: Mode = Mode.TEXT
    init_image: bytes | None = None  # PNG of the candidate being refined
    mask_image: bytes | None = None  # PNG, white = repaint (inpaint only)
    strength: float = 0.75  # img2img / inpaint: how far from the init image
    image_guidance: float = 1.5  # InstructPix2Pix only
    adapter: AdapterRef | None = None  # a LoRA for the candidates (see `arms`); None = the base model
    # Per candidate, True = with the adapter, False = base; () = every candidate with the adapter. An arena
    # round mixes them: the generator runs each arm as its own sub-batch and keeps the positions.
    arms: tuple[bool, ...] = ()
    # An arena round: the seed its message shows, which does not make its candidates (their `seeds` are
    # secret draws), so nobody can regenerate an arm outside the arena. None = the round shows its seeds.
    # The generator never reads it.
    shown_seed: int | None = None

    @property
    def count(self) -> int:
        return len(self.seeds)

    def uses_adapter(self, index: int) -> bool:
        """Whether candidate `index` (0-based) is made with the adapter."""
        return self.adapter is not None and (not self.arms or self.arms[index])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        data["arms"] = list(self.arms)
        data["mode"] = self.mode.value
        for key in ("init_image", "mask_image"):
            if data[key] is not None:
                data[key] = base64.b64encode(data[key]).decode("ascii")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        data = dict(data)
        data["seeds"] = tuple(int(s) for s in data["seeds"])
        data["mode"] = Mode(data.get("mode", Mode.TEXT))
        data["arms"] = tuple(bool(a) for a in data.get("arms", ()))
        if data.get("adapter") is not None:
            data["adapter"] = AdapterRef(**data["adapter"])
        for key in ("init_image", "mask_image"):
            if data.get(key) is not None:
                data[key] = base64.b64decode(data[key])
        return cls(**data)


@dataclass(frozen=True)
class GenerationResult:
    """The candidates of one round, as PNG bytes, in seed order."""

    images: tuple[bytes, ...]
    seeds: tuple[int, ...]
    model_id: str
    scheduler: str
    elapsed_s: float
    model_revision: str = ""
    extras: dict[str, str] = field(default_factory=dict)
    nsfw: tuple[bool, ...] = ()  # one safety-checker flag per image; () = not checked

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["images"] = [base64.b64encode(i).decode("ascii") for i in self.images]
        data["seeds"] = list(self.seeds)
        data["nsfw"] = list(self.nsfw)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationResult:
        data = dict(data)
        data["images"] = tuple(base64.b64decode(i) for i in data["images"])
        data["seeds"] = tuple(int(s) for s in data["seeds"])
        # Results from a worker older than the safety checker have no "nsfw": not checked.
        data["nsfw"] = tuple(bool(flag) for flag in data.get("nsfw", ()))
        return cls(**data)


# Called from the worker thread as (step, total_steps); must be cheap and thread-safe.
ProgressCallback = Callable[[int, int], None]


class GenerationCancelled(Exception):
    """Raised inside a pipeline run when its job was cancelled; the pipeline stays usable."""


def batch_key(request: GenerationRequest) -> str:
    """Requests with equal non-empty keys can share one pipeline call: text2img, differing only in
    prompt, negative prompt and seeds. Other modes carry their own image and never batch."""
    if request.mode is not Mode.TEXT or len(set(request.arms)) > 1:  # an arena round runs two sub-batches
        return ""
    fields = request.to_dict()
    for name in ("prompt", "negative_prompt", "seeds", "shown_seed"):
        del fields[name]
    return json.dumps(fields, sort_keys=True)
