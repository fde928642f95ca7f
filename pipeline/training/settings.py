"""What a training run is asked to do, what it reports while running, and what it returns."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pipeline.training.losses import DPO_BETA, KTO_BETA

Method = Literal["dpo", "kto"]
METHODS: tuple[Method, ...] = ("dpo", "kto")


class TrainingError(Exception):
    """Base of the errors a training run raises for a reason the caller can act on."""


class InsufficientMemory(TrainingError):
    """The accelerator has less free memory than the run is estimated to need (see memory.py)."""

    def __init__(self, needed_bytes: int, free_bytes: int, device: str) -> None:
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.device = device
        super().__init__(
            f"not enough free memory on {device}: training needs about {needed_bytes / 2**30:.1f} GiB, "
            f"{free_bytes / 2**30:.1f} GiB are free (lower batch or resolution, or enable gradient_checkpointing)"
        )


class CheckpointDamaged(TrainingError):
    """A checkpoint file cannot be what a run wrote: truncated, overwritten, emptied, or edited to something no
    run could have saved. `path` is the file, `reason` what is wrong with it (one line)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"checkpoint file {path} is damaged: {reason}")


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one LoRA training run; `check()` names the first bad value.

    One optimizer step sees `batch × grad_accum` examples (pairs for DPO, images for KTO).
    `beta=None` takes the method's default (DPO 2500, KTO 1000; see losses.py). `eval_every` and
    `checkpoint_every` count optimizer steps; `checkpoint_every=None` saves a checkpoint only when
    stopped.
    """

    method: Method
    steps: int
    rank: int = 8
    lr: float = 1e-5
    beta: float | None = None
    batch: int = 4
    grad_accum: int = 1
    resolution: int = 512
    seed: int = 0
    gradient_checkpointing: bool = False
    eval_every: int = 50
    checkpoint_every: int | None = None
    max_grad_norm: float = 1.0
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0

    @property
    def effective_beta(self) -> float:
        if self.beta is not None:
            return self.beta
        return DPO_BETA if self.method == "dpo" else KTO_BETA

    def check(self) -> TrainSettings:
        """Raise ValueError naming the first bad value; return self so that calls chain."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("steps", "rank", "batch", "grad_accum", "eval_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.checkpoint_every is not None and (not _is_int(self.checkpoint_every) or self.checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive integer or None, got {self.checkpoint_every!r}")
        if not _is_int(self.resolution) or self.resolution < 8 or self.resolution % 8:
            # The VAEs of Stable Diffusion downsample by 8: other sizes give misaligned latents.
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be True or False, got {self.gradient_checkpointing!r}")
        for name in ("lr", "max_grad_norm", "kto_desirable_weight", "kto_undesirable_weight"):
            _check_positive(name, getattr(self, name))
        if self.beta is not None:
            _check_positive("beta", self.beta)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: TrainSettings) -> list[str]:
        """'name: mine != other' for every field that differs, in field order."""
        return [f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}" for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class TrainProgress:
    """Reported after every optimizer step. `held_out_accuracy` is the latest measurement (None if none)."""

    step: int  # optimizer steps done, 1..steps
    steps: int
    loss: float  # of this step, averaged over its micro-batches
    train_accuracy: float  # implicit accuracy of this step's examples
    held_out_accuracy: float | None
    it_per_s: float  # optimizer steps per second in this process so far
    eta_s: float  # seconds to the last step at that rate


@dataclass(frozen=True)
class Curves:
    """Per-step loss and training accuracy (index i = step i + 1), and held-out accuracy at the steps
    where it was measured (step 0 = before training)."""

    loss: tuple[float, ...] = ()
    train_accuracy: tuple[float, ...] = ()
    held_out: tuple[tuple[int, float], ...] = ()

    def add_step(self, loss: float, accuracy: float) -> Curves:
        return Curves((*self.loss, loss), (*self.train_accuracy, accuracy), self.held_out)

    def add_held_out(self, step: int, accuracy: float) -> Curves:
        return Curves(self.loss, self.train_accuracy, (*self.held_out, (step, accuracy)))

    def to_dict(self) -> dict[str, Any]:
        return {"loss": list(self.loss), "train_accuracy": list(self.train_accuracy),
                "held_out": [[step, accuracy] for step, accuracy in self.held_out]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Curves:
        return cls(tuple(data["loss"]), tuple(data["train_accuracy"]),
                   tuple((int(step), float(accuracy)) for step, accuracy in data["held_out"]))


@dataclass(frozen=True)
class TrainResult:
    """What a run did. `lora` is the saved `pytorch_lora_weights.safetensors`, None when interrupted."""

    settings: TrainSettings
    model: str
    steps_done: int
    interrupted: bool
    lora: Path | None
    checkpoint: Path | None  # where an interrupted run can resume from
    curves: Curves
    seconds: float  # training wall time, summed over resumed sessions
    device: str
    dtype: str
    peak_memory_bytes: int | None  # torch.cuda.max_memory_allocated of this session; None on CPU
    versions: dict[str, str] = field(default_factory=dict)  # torch, diffusers, transformers, peft
    counts: dict[str, int] = field(default_factory=dict)  # examples, images, captions (see trainer)

    @property
    def held_out_accuracy(self) -> float | None:
        """The last held-out measurement (at the final step for a finished run)."""
        return self.curves.held_out[-1][1] if self.curves.held_out else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "beta": self.settings.effective_beta,
            "model": self.model,
            "steps_done": self.steps_done,
            "interrupted": self.interrupted,
            "lora": str(self.lora) if self.lora else None,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "curves": self.curves.to_dict(),
            "held_out_accuracy": self.held_out_accuracy,
            "seconds": self.seconds,
            "device": self.device,
            "dtype": self.dtype,
            "peak_memory_bytes": self.peak_memory_bytes,
            "versions": dict(self.versions),
            "counts": dict(self.counts),
        }
