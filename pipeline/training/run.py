"""`train()`: the loop around LoraTrainer: progress, held-out evaluation, stop, checkpoints, resume."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import diffusers
import peft
import torch
import transformers

from pipeline.training.checkpoint import (
    CHECKPOINT_DIR,
    TENSORS_FILE,
    Checkpoint,
    first_line,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.training.data import Example, check_examples, fingerprint
from pipeline.training.settings import CheckpointDamaged, Curves, TrainProgress, TrainResult, TrainSettings
from pipeline.training.trainer import LoraTrainer
from storage.training_data import FeedbackImage

log = logging.getLogger(__name__)

ProgressCallback = Callable[[TrainProgress], None]


def train(model: str | Path, train_examples: Sequence[Example], held_out_examples: Sequence[Example], out: Path,
          settings: TrainSettings, *, progress: ProgressCallback | None = None, stop: threading.Event | None = None,
          resume: bool = False, device: str | None = None, local_files_only: bool = True) -> TrainResult:
    """Train a LoRA on `train_examples` (PreferencePair for "dpo", FeedbackImage for "kto") into `out`.

    A finished run writes `out/pytorch_lora_weights.safetensors` and removes its checkpoint. When
    `stop` is set, the current step finishes, `out/checkpoint/` is written and the result says
    `interrupted`; `resume=True` continues from there (ValueError when settings, model or examples
    differ). `device` defaults to CUDA when available; training is bf16 autocast on CUDA, float32 on
    the CPU (where `torch.set_num_threads` is the caller's: one thread is much faster on shared cores).
    Raises ValueError for bad settings or examples and InsufficientMemory when the GPU cannot fit it.
    """
    settings.check()
    if not train_examples:
        raise ValueError("no training examples: at least one is needed")
    check_examples(train_examples, settings.method, "train_examples")
    check_examples(held_out_examples, settings.method, "held_out_examples")
    model, out = str(model), Path(out)
    folder = out / CHECKPOINT_DIR
    examples = fingerprint(train_examples, held_out_examples)
    restored = load_checkpoint(folder) if resume else None
    if restored:
        restored[0].check_resumable(settings, model, examples)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)

    trainer = LoraTrainer.load(model, train_examples, held_out_examples, settings, device=device,
                               local_files_only=local_files_only)
    if restored:
        checkpoint, state = restored
        try:
            trainer.restore(state)
        except (KeyError, RuntimeError, TypeError, ValueError) as error:  # names, shapes, optimizer state
            raise CheckpointDamaged(folder / TENSORS_FILE,
                                    f"it does not fit this run's adapter ({first_line(error)})") from None
        step, curves, seconds_before = checkpoint.step, checkpoint.curves, checkpoint.seconds
        log.info("resuming %s training at step %d of %d from %s", settings.method, step, settings.steps, folder)
    else:
        step, curves, seconds_before = 0, Curves(), 0.0
        curves = _evaluate(trainer, curves, 0)

    started = time.perf_counter()
    steps_here = 0

    def result(interrupted: bool, lora: Path | None) -> TrainResult:
        return TrainResult(
            settings=settings, model=model, steps_done=step, interrupted=interrupted, lora=lora,
            checkpoint=folder if interrupted else None, curves=curves,
            seconds=seconds_before + time.perf_counter() - started, device=str(trainer.device),
            dtype=str(trainer.dtype).removeprefix("torch."),
            peak_memory_bytes=torch.cuda.max_memory_allocated(device) if on_cuda else None,
            versions={"torch": torch.__version__, "diffusers": diffusers.__version__,
                      "transformers": transformers.__version__, "peft": peft.__version__},
            counts=_counts(settings, train_examples, held_out_examples, trainer))

    def save(at: int) -> None:
        checkpoint = Checkpoint(step=at, settings=settings, model=model, examples=examples, curves=curves,
                                seconds=seconds_before + time.perf_counter() - started)
        save_checkpoint(folder, checkpoint, trainer.state())
        log.info("checkpoint of step %d written to %s", at, folder)

    while step < settings.steps:
        if stop is not None and stop.is_set():
            save(step)
            log.info("training stopped at step %d of %d", step, settings.steps)
            return result(True, None)
        loss, accuracy = trainer.step()
        step += 1
        steps_here += 1
        curves = curves.add_step(loss, accuracy)
        if step % settings.eval_every == 0 or step == settings.steps:
            curves = _evaluate(trainer, curves, step)
        if progress is not None:
            rate = steps_here / max(time.perf_counter() - started, 1e-9)
            held_out = curves.held_out[-1][1] if curves.held_out else None
            progress(TrainProgress(step=step, steps=settings.steps, loss=loss, train_accuracy=accuracy,
                                   held_out_accuracy=held_out, it_per_s=rate, eta_s=(settings.steps - step) / rate))
        if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < settings.steps:
            save(step)

    out.mkdir(parents=True, exist_ok=True)
    lora = trainer.save_lora(out)
    for leftover in (folder, *folder.parent.glob(f".{folder.name}.*")):  # with a killed save's partial copy
        shutil.rmtree(leftover, ignore_errors=True)  # finished: the adapter is the result, nothing to resume
    log.info("trained %s LoRA in %d steps: %s", settings.method, step, lora)
    return result(False, lora)


def _evaluate(trainer: LoraTrainer, curves: Curves, step: int) -> Curves:
    accuracy = trainer.evaluate()
    if accuracy is None:
        return curves
    log.info("held-out implicit accuracy at step %d: %.3f", step, accuracy)
    return curves.add_held_out(step, accuracy)


def _counts(settings: TrainSettings, train: Sequence[Example], held_out: Sequence[Example],
            trainer: LoraTrainer) -> dict[str, int]:
    counts = {"train": len(train), "held_out": len(held_out),
              "train_images": int(trainer.train_examples.latents.shape[0]),
              "train_captions": int(trainer.train_examples.embeddings.shape[0])}
    if settings.method == "kto":
        desirable = sum(1 for e in train if isinstance(e, FeedbackImage) and e.desirable)
        counts |= {"train_desirable": desirable, "train_undesirable": len(train) - desirable}
    return counts
