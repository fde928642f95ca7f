"""The resumable state of a run in `<out>/checkpoint/`: `state.json` (readable) and `trainer.pt` (tensors).

`state.json` holds the step, settings, base model, a digest of the examples, the curves so far and the
seconds spent; `trainer.pt` the adapter's weights by parameter name, the optimizer state and the
sampling generator's state (`torch.load(..., weights_only=True)` reads it back: tensors and plain
containers only). A checkpoint is written into a sibling folder and renamed into place, so an
interrupted save leaves the previous checkpoint whole: as `checkpoint/`, or, when killed between the two
renames, as `.checkpoint.previous/`, which `recover_checkpoint` (and every save and load) puts back.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.training.settings import Curves, TrainSettings

CHECKPOINT_DIR = "checkpoint"
_STATE = "state.json"
_TENSORS = "trainer.pt"
_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    step: int
    settings: TrainSettings
    model: str
    examples: str  # data.fingerprint of the train and held-out lists
    curves: Curves
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "step": self.step, "settings": self.settings.to_dict(), "model": self.model,
                "examples": self.examples, "curves": self.curves.to_dict(), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        if data.get("format") != _FORMAT:
            raise ValueError(f"checkpoint format {data.get('format')!r} is not {_FORMAT}")
        return cls(step=int(data["step"]), settings=TrainSettings.from_dict(data["settings"]), model=data["model"],
                   examples=data["examples"], curves=Curves.from_dict(data["curves"]), seconds=float(data["seconds"]))

    def check_resumable(self, settings: TrainSettings, model: str, examples: str) -> None:
        """ValueError naming what differs, when this checkpoint is not the same run as the one asked for."""
        # How often checkpoints are saved changes nothing that is trained: a resume may save more or less often.
        differences = [d for d in settings.differences(self.settings) if not d.startswith("checkpoint_every:")]
        if differences:
            raise ValueError("cannot resume: settings differ from the checkpoint's (now != checkpoint): "
                             + "; ".join(differences))
        if model != self.model:
            raise ValueError(f"cannot resume: model {model!r} != the checkpoint's {self.model!r}")
        if examples != self.examples:
            raise ValueError("cannot resume: the training or held-out examples differ from the checkpoint's")


def recover_checkpoint(folder: Path) -> bool:
    """Put back the checkpoint a save killed between its two renames left aside; whether `folder` holds one."""
    previous = folder.with_name(f".{folder.name}.previous")
    if not folder.exists() and (previous / _STATE).is_file():
        os.replace(previous, folder)
    return folder.is_dir()


def save_checkpoint(folder: Path, checkpoint: Checkpoint, trainer_state: dict[str, Any]) -> Path:
    """Write the checkpoint to `folder`, replacing the one there only once the new one is complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.partial")
    previous = folder.with_name(f".{folder.name}.previous")
    recover_checkpoint(folder)
    for leftover in (partial, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir()
    torch.save(trainer_state, partial / _TENSORS)
    (partial / _STATE).write_text(json.dumps(checkpoint.to_dict(), indent=1), encoding="utf-8")
    if folder.exists():
        os.replace(folder, previous)
    os.replace(partial, folder)
    shutil.rmtree(previous, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint in `folder` and its tensors (on the CPU); FileNotFoundError when there is none."""
    recover_checkpoint(folder)
    state = folder / _STATE
    if not state.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from in {folder}")
    checkpoint = Checkpoint.from_dict(json.loads(state.read_text(encoding="utf-8")))
    return checkpoint, torch.load(folder / _TENSORS, map_location="cpu", weights_only=True)
