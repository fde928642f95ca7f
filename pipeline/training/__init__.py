"""Votes → a LoRA: Diffusion-DPO on preference pairs, Diffusion-KTO on liked/disliked images.

    result = train(model, train_examples, held_out_examples, out, TrainSettings(method="dpo", steps=500),
                   progress=print, stop=threading.Event())

Modules: `losses` (the two objectives, pure), `data` (images and captions → cached latents and
embeddings, sampling), `trainer` (the model, its adapter, one optimizer step, held-out evaluation),
`run` (the loop: progress, stop, checkpoints, resume), `checkpoint`, `memory` (the GPU estimate),
`settings` (settings, progress and result records, errors).
"""

from pipeline.training.losses import dpo_loss, kto_example_losses, kto_loss, per_sample_error
from pipeline.training.memory import estimate_training_bytes
from pipeline.training.run import ProgressCallback, train
from pipeline.training.settings import (
    CheckpointDamaged,
    Curves,
    InsufficientMemory,
    TrainingError,
    TrainProgress,
    TrainResult,
    TrainSettings,
)
from pipeline.training.trainer import LORA_FILE, LoraTrainer

__all__ = [
    "LORA_FILE",
    "CheckpointDamaged",
    "Curves",
    "InsufficientMemory",
    "LoraTrainer",
    "ProgressCallback",
    "TrainProgress",
    "TrainResult",
    "TrainSettings",
    "TrainingError",
    "dpo_loss",
    "estimate_training_bytes",
    "kto_example_losses",
    "kto_loss",
    "per_sample_error",
    "train",
]
