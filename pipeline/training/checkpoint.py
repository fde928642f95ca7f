"""The resumable state of a run in `<out>/checkpoint/`: `state.json` (readable) and `trainer.pt` (tensors).

`state.json` holds the step, settings, base model, a digest of the examples, the curves so far and the
seconds spent; `trainer.pt` the adapter's weights by parameter name, the optimizer state and the
sampling generator's state (`torch.load(..., weights_only=True)` reads it back: tensors and plain
containers only). A checkpoint is written into a sibling folder and renamed into place, so an
interrupted save leaves the previous checkpoint whole: as `checkpoint/`, or, when killed between the two
renames, as `.checkpoint.previous/`, which `recover_checkpoint` (and every save and load) puts back.

Loading checks what it reads: a file that is not what a run could have saved (truncated, random or empty
bytes, a state without its settings, a step outside 0..steps-1 or unlike its loss curve) raises
`CheckpointDamaged` naming the file, rather than resuming from it: an edited step would have committed the
weights of one step count under another.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.training.settings import CheckpointDamaged, Curves, TrainSettings

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
TENSORS_FILE = "trainer.pt"
_TRAINER_STATE = ("weights", "optimizer", "generator")  # LoraTrainer.state()
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
        """ValueError (KeyError for a missing field) when `data` is not what `to_dict` of some run wrote."""
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        if data.get("format") != _FORMAT:
            raise ValueError(f"checkpoint format {data.get('format')!r} is not {_FORMAT}")
        settings = TrainSettings.from_dict(data["settings"]).check()
        step, curves = data["step"], Curves.from_dict(data["curves"])
        # A run stops (and saves) after 0 to steps - 1 steps, and its loss curve has one entry per step done.
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < settings.steps:
            raise ValueError(f"step {step!r} is out of range for a run of {settings.steps} steps (0 to "
                             f"{settings.steps - 1})")
        if len(curves.loss) != step:
            raise ValueError(f"step {step} but its loss curve has {len(curves.loss)} steps")
        return cls(step=step, settings=settings, model=str(data["model"]), examples=str(data["examples"]),
                   curves=curves, seconds=float(data["seconds"]))

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
    if not folder.exists() and (previous / STATE_FILE).is_file():
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
    torch.save(trainer_state, partial / TENSORS_FILE)
    (partial / STATE_FILE).write_text(json.dumps(checkpoint.to_dict(), indent=1), encoding="utf-8")
    if folder.exists():
        os.replace(folder, previous)
    os.replace(partial, folder)
    shutil.rmtree(previous, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint in `folder` and its tensors (on the CPU); FileNotFoundError when there is none,
    CheckpointDamaged when a file of it is not what a run saved."""
    recover_checkpoint(folder)
    state = folder / STATE_FILE
    if not state.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from in {folder}")
    try:
        checkpoint = Checkpoint.from_dict(json.loads(state.read_text(encoding="utf-8")))
    except KeyError as error:
        raise CheckpointDamaged(state, f"it has no {error.args[0]!r}") from None
    except json.JSONDecodeError as error:
        raise CheckpointDamaged(state, f"not JSON ({error})") from None
    except (ValueError, TypeError) as error:  # bad bytes, a bad field, an impossible step
        raise CheckpointDamaged(state, first_line(error)) from None
    tensors = folder / TENSORS_FILE
    try:
        loaded = torch.load(tensors, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, random or empty: zip, pickle, EOF and OS errors alike
        # torch's own text is a paragraph, about weights_only defaults for random bytes: the type says enough.
        raise CheckpointDamaged(tensors, f"truncated or not a torch file ({type(error).__name__} from torch.load)"
                                ) from None
    if not isinstance(loaded, dict) or set(loaded) != set(_TRAINER_STATE) or not isinstance(loaded["weights"], dict):
        raise CheckpointDamaged(tensors, f"it does not hold {', '.join(_TRAINER_STATE)} state as a run saves them")
    return checkpoint, loaded


def first_line(error: BaseException, limit: int = 160) -> str:
    """An error in one short line: torch's load errors run to a dozen lines of advice."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
