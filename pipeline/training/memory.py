"""How much accelerator memory a LoRA preference run needs, checked before the model goes on the GPU.

How memory scales (SD 1.5 numbers, bf16 weights, `batch` counted in examples):

    weights       every parameter of the pipeline in the load dtype: 1.07 G params × 2 B ≈ 2.0 GiB
                  (UNet 860 M, text encoder 123 M, VAE 84 M); constant
    adapter       LoRA parameters × 16 B (fp32 weight, gradient, two AdamW moments); rank 8 on SD 1.5's
                  attention projections = 1.6 M params ≈ 25 MiB: negligible; linear in rank
    activations   what autograd keeps for the backward pass of the adapted UNet, per UNet sample:
                  linear in latent pixels × the UNet's first block width. A DPO micro-batch runs
                  2 × batch samples (winner and loser), KTO batch samples; the reference pass runs
                  without grad and keeps nothing. Not reduced by LoRA: gradients must flow back
                  through the whole UNet to reach the adapters in its first blocks.
    headroom      1 GiB for cuBLAS/cuDNN workspaces, the VAE encoding at start-up and fragmentation

Activations per sample were counted with saved-tensor hooks on the meta device (SD 1.5's UNet, bf16,
SDPA stood in by a flash-style kernel that keeps q, k, v, output and log-sum-exp): 680 B per latent
pixel per first-block channel, i.e. 0.84 GiB per sample at 512² (64² latents × 320 channels), 114 B
(0.14 GiB) with gradient checkpointing. Autocast runs GroupNorm in float32, which keeps float32 copies
next to the bf16 ones, so the estimate doubles those counts (1400 B and 240 B). SD 1.5 at 512² with
batch 8 pairs therefore needs about 2 + 16 × 1.7 + 1 ≈ 30 GiB (about 8 GiB with checkpointing);
batch 4 pairs about 17 GiB. The estimate is deliberately on the high side; bench/train.py prints it
next to the measured peak.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.training.settings import InsufficientMemory, TrainSettings

ACTIVATION_BYTES = 1400  # per latent pixel per first-block channel per UNet sample, with autograd
CHECKPOINTED_ACTIVATION_BYTES = 240  # the same with gradient checkpointing
ADAPTER_BYTES_PER_PARAM = 16
HEADROOM_BYTES = 2**30
_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_parameter_count(unet: torch.nn.Module, rank: int) -> int:
    """Parameters a rank-`rank` LoRA on the attention projections adds: rank × (in + out) per Linear."""
    return sum(rank * (module.in_features + module.out_features) for name, module in unet.named_modules()
               if isinstance(module, torch.nn.Linear) and name.endswith(_LORA_TARGETS))


def estimate_training_bytes(pipe: Any, settings: TrainSettings) -> int:
    """Bytes the run is estimated to need on the accelerator (see the module docstring)."""
    weights = sum(p.numel() * p.element_size() for module in (pipe.unet, pipe.vae, pipe.text_encoder)
                  for p in module.parameters())
    adapter = lora_parameter_count(pipe.unet, settings.rank) * ADAPTER_BYTES_PER_PARAM
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)  # as the pipelines' vae_scale_factor: 8 for SD
    latent_pixels = (settings.resolution // factor) ** 2
    per_pixel = CHECKPOINTED_ACTIVATION_BYTES if settings.gradient_checkpointing else ACTIVATION_BYTES
    samples = settings.batch * (2 if settings.method == "dpo" else 1)
    activations = samples * latent_pixels * pipe.unet.config.block_out_channels[0] * per_pixel
    return weights + adapter + activations + HEADROOM_BYTES


def check_free_memory(pipe: Any, settings: TrainSettings, device: torch.device) -> int:
    """Raise InsufficientMemory when `device` has less free memory than the estimate; return the estimate."""
    needed = estimate_training_bytes(pipe, settings)
    free, _total = torch.cuda.mem_get_info(device)
    if free < needed:
        raise InsufficientMemory(needed, free, str(device))
    return needed
