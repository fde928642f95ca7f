"""One loaded model with its LoRA adapter, optimizer and cached examples: `step()` is one optimizer step.

The adapter is peft LoRA on the UNet's attention projections, added through diffusers' PEFT
integration (`unet.add_adapter`). With `init_lora_weights="gaussian"` its B matrices start at zero, so
the adapted UNet starts as the base UNet exactly. The reference model of both losses is the same UNet
with its adapters disabled: no second copy of the weights.

Every random draw of training (which examples, the noise, the timesteps) comes from one CPU
`torch.Generator` seeded with `settings.seed`, whose state goes into checkpoints: a resumed CPU run
repeats the draws an uninterrupted run would have made. Held-out evaluation draws from its own
generator, re-seeded at every evaluation, so each one scores the same noisy inputs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from diffusers.utils import logging as diffusers_logging
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from pipeline.adapters import LORA_FILE  # the file diffusers' save_lora_weights writes, which the bot serves
from pipeline.training.data import EncodedExamples, Example, encode_examples, sample_indices
from pipeline.training.losses import dpo_logits, dpo_loss, kto_loss, per_sample_error
from pipeline.training.memory import check_free_memory
from pipeline.training.settings import TrainSettings

log = logging.getLogger(__name__)

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_EVAL_SEED = 0x5EED  # added to settings.seed: held-out draws differ from the first training draws


class LoraTrainer:
    """Use `LoraTrainer.load(...)`; then `step()`, `evaluate()`, `save_lora(out)`, `state()`/`restore()`."""

    def __init__(self, pipe: Any, train: EncodedExamples, held_out: EncodedExamples | None,
                 settings: TrainSettings) -> None:
        self.pipe = pipe
        self.unet = pipe.unet
        self.train_examples = train
        self.held_out_examples = held_out
        self.settings = settings
        self.device = self.unet.device
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"cannot train a model with prediction_type {self.prediction_type!r}")
        self.generator = torch.Generator("cpu").manual_seed(settings.seed)
        self.parameters = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.lr)

    @classmethod
    def load(cls, model: str, train: Sequence[Example], held_out: Sequence[Example], settings: TrainSettings, *,
             device: str, local_files_only: bool = True) -> LoraTrainer:
        """Load the base pipeline, add the adapter, and encode every example once."""
        on_cuda = torch.device(device).type == "cuda"
        dtype = torch.bfloat16 if on_cuda else torch.float32
        diffusers_logging.disable_progress_bar()
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, local_files_only=local_files_only,
                                                       safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
        if on_cuda:
            # Loaded on the CPU first, so a run that cannot fit fails here with the numbers, not mid-step.
            check_free_memory(pipe, settings, torch.device(device))
        for module in (pipe.vae, pipe.text_encoder, pipe.unet):
            module.requires_grad_(False)
        # The adapter's A matrices are drawn on the CPU from the global generator, seeded here without
        # disturbing the caller's random state: the same seed gives the same adapter on any device.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            pipe.unet.add_adapter(LoraConfig(r=settings.rank, lora_alpha=settings.rank,
                                             init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
        # bf16 weights cannot take AdamW's small updates; the adapter's are trained in float32.
        cast_training_params(pipe.unet, dtype=torch.float32)
        pipe.to(device)
        if settings.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        pipe.unet.train()
        encoded_train = encode_examples(pipe, train, settings.resolution)
        encoded_held_out = encode_examples(pipe, held_out, settings.resolution) if held_out else None
        return cls(pipe, encoded_train, encoded_held_out, settings)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _reference(self) -> Iterator[None]:
        """The base model: adapters off (peft also clears their requires_grad), back on afterwards."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def _errors(self, indices: torch.Tensor, examples: EncodedExamples, generator: torch.Generator, *,
                grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image errors of the adapted and the reference UNet for examples `indices`.

        For pairs the batch is [winners, losers], both halves with the same noise and timesteps; the
        errors come back in that order.
        """
        indices = indices.to(self.device)
        pairs = examples.second is not None
        images = torch.cat([examples.first[indices], examples.second[indices]]) if pairs else examples.first[indices]
        latents = examples.latents[images]
        count = len(indices)
        noise = torch.randn((count, *latents.shape[1:]), generator=generator).to(self.device)
        timesteps = torch.randint(self.scheduler.config.num_train_timesteps, (count,), generator=generator)
        timesteps = timesteps.to(self.device)
        context = examples.embeddings[examples.caption[indices]]
        if pairs:
            noise, timesteps, context = noise.repeat(2, 1, 1, 1), timesteps.repeat(2), context.repeat(2, 1, 1)
        noisy = self.scheduler.add_noise(latents, noise, timesteps).to(self.dtype)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(latents, noise, timesteps)
        with self._autocast():
            with torch.set_grad_enabled(grad):
                model_err = per_sample_error(self.unet(noisy, timesteps, context).sample, target)
            with torch.no_grad(), self._reference():
                ref_err = per_sample_error(self.unet(noisy, timesteps, context).sample, target)
        return model_err, ref_err

    def _loss(self, indices: torch.Tensor, examples: EncodedExamples, model_err: torch.Tensor,
              ref_err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        settings = self.settings
        if examples.second is not None:
            model_w, model_l = model_err.chunk(2)
            ref_w, ref_l = ref_err.chunk(2)
            return dpo_loss(model_w, model_l, ref_w, ref_l, settings.effective_beta)
        assert examples.desirable is not None
        return kto_loss(model_err, ref_err, examples.desirable[indices.to(self.device)], settings.effective_beta,
                        desirable_weight=settings.kto_desirable_weight,
                        undesirable_weight=settings.kto_undesirable_weight)

    def step(self) -> tuple[float, float]:
        """One optimizer step over `grad_accum` micro-batches; its mean loss and implicit accuracy."""
        settings = self.settings
        balanced = settings.method == "kto"
        losses, accuracies = [], []
        for _ in range(settings.grad_accum):
            indices = sample_indices(self.train_examples, settings.batch, self.generator, balanced=balanced)
            model_err, ref_err = self._errors(indices, self.train_examples, self.generator, grad=True)
            loss, accuracy = self._loss(indices, self.train_examples, model_err, ref_err)
            (loss / settings.grad_accum).backward()
            losses.append(loss.detach())
            accuracies.append(accuracy)
        torch.nn.utils.clip_grad_norm_(self.parameters, settings.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(torch.stack(losses).mean()), float(torch.stack(accuracies).mean())

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Implicit accuracy over every held-out example, with the same noise at every call."""
        examples = self.held_out_examples
        if examples is None:
            return None
        generator = torch.Generator("cpu").manual_seed(self.settings.seed + _EVAL_SEED)
        scores = []
        for start in range(0, len(examples), self.settings.batch):
            indices = torch.arange(start, min(start + self.settings.batch, len(examples)))
            model_err, ref_err = self._errors(indices, examples, generator, grad=False)
            if examples.second is not None:
                model_w, model_l = model_err.chunk(2)
                ref_w, ref_l = ref_err.chunk(2)
                scores.append(dpo_logits(model_w, model_l, ref_w, ref_l))
            else:
                assert examples.desirable is not None
                sign = examples.desirable[indices.to(self.device)].float() * 2 - 1
                scores.append(sign * (ref_err - model_err))
        score = torch.cat(scores)
        return float(((score > 0).float() + 0.5 * (score == 0).float()).mean())

    # --- weights and state ------------------------------------------------------------------------

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter in diffusers' LoRA format, on the CPU, float32."""
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        return {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in state.items()}

    def save_lora(self, out: Path) -> Path:
        """Write `out/pytorch_lora_weights.safetensors`, loadable by `pipe.load_lora_weights(out)`."""
        # No peft config in the file's metadata (as diffusers' DPO script): an older peft refuses a config
        # with fields it does not know, and without it loaders take alpha = rank, which is what we train.
        StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=self.lora_state_dict())
        return out / LORA_FILE

    def state(self) -> dict[str, Any]:
        """Trainable weights (by parameter name), optimizer and generator state: what resuming needs."""
        weights = {name: p.detach().cpu().clone() for name, p in self.unet.named_parameters() if p.requires_grad}
        return {"weights": weights, "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        named = {name: p for name, p in self.unet.named_parameters() if p.requires_grad}
        weights = state["weights"]
        if set(weights) != set(named):
            raise ValueError("the checkpoint's adapter does not match this model's (different LoRA layers)")
        with torch.no_grad():
            for name, parameter in named.items():
                parameter.copy_(weights[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
