"""Train the toy model from scratch: a Stable-Diffusion-architecture checkpoint that has learned the toy
world (`world.py`) from its captions.

Three phases, all on the CPU in about half an hour (`bench/toyworld.py` measures it):
1. the VAE learns to reconstruct drawn scenes (8× downsampling, as SD's);
2. every scene of a fixed dataset is encoded once, and the latents' spread sets the VAE's scaling factor;
3. the UNet and the text encoder learn to denoise those latents from the captions (10 % empty captions
   for classifier-free guidance), with an exponential moving average of the UNet's weights, which is
   what is saved.
The result is an ordinary `StableDiffusionPipeline` folder with a DDIM scheduler.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipeline.tiny import write_vocab_files
from pipeline.toyworld import evaluate, world
from pipeline.toyworld.recipe import Recipe, caption_words

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, float], None]  # phase, step, total, loss


def build_toy_model(out: Path, recipe: Recipe, *, progress: Progress | None = None, evaluate_every: int = 0
                    ) -> Path:
    """Train a toy model by `recipe` and save it as a pipeline folder at `out` (replaced if present)."""
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    scratch = out.with_name(f".{out.name}.building")
    shutil.rmtree(scratch, ignore_errors=True)
    write_vocab_files(scratch / "tokenizer", tuple(caption_words()))
    tokenizer = CLIPTokenizer.from_pretrained(scratch / "tokenizer", model_max_length=recipe.max_tokens)
    _check_tokens(tokenizer)

    vae = _train_vae(recipe, rng, progress)
    vae.save_pretrained(scratch / "vae")  # replaced at the end; lets a long build's VAE be looked at early
    scenes = [world.random_scene(rng) for _ in range(recipe.dataset_size)]
    latents = _encode(vae, scenes, recipe.resolution)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    latents = latents * vae.config.scaling_factor

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.text_hidden, intermediate_size=recipe.text_hidden * 4,
        num_hidden_layers=recipe.text_layers, num_attention_heads=4, max_position_embeddings=recipe.max_tokens,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=recipe.resolution // 8, in_channels=4, out_channels=4,
        block_out_channels=recipe.unet_channels, layers_per_block=recipe.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * len(recipe.unet_channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(recipe.unet_channels),
        cross_attention_dim=recipe.text_hidden, attention_head_dim=8, norm_num_groups=16,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    captions = [s.caption for s in scenes]
    ids = tokenizer(captions, padding="max_length", max_length=recipe.max_tokens, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=recipe.max_tokens, return_tensors="pt").input_ids

    def pipeline() -> StableDiffusionPipeline:
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    # Each stage: a fresh optimizer, warm-up and cosine decay from the previous stage's averaged weights
    # (cosine annealing with restarts): a longer recipe adds a stage rather than stretching the schedule.
    for stage in range(len(recipe.unet_stages)):
        _train_unet(recipe, stage, unet, text_encoder, scheduler, latents, ids, empty, progress,
                    evaluate=(lambda: prompt_following(pipeline())) if evaluate_every else None,
                    evaluate_every=evaluate_every)

    pipe = pipeline()
    pipe.save_pretrained(scratch)
    write_vocab_files(scratch / "tokenizer", tuple(caption_words()))  # the SD 1.5 layout: vocab + merges
    seconds = round(time.perf_counter() - started, 1)
    (scratch / "recipe.json").write_text(json.dumps({"digest": recipe.digest(), "seconds": seconds,
                                                     "stages_done": len(recipe.unet_stages)}))
    shutil.rmtree(out, ignore_errors=True)
    scratch.rename(out)
    return out


def _check_tokens(tokenizer: CLIPTokenizer) -> None:
    for word in caption_words():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"the toy tokenizer splits {word!r} into {len(ids)} tokens")


def _images(scenes: list[world.Scene], px: int) -> torch.Tensor:
    arrays = np.stack([np.asarray(world.draw(s, px), dtype=np.float32) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def _train_vae(recipe: Recipe, rng: random.Random, progress: Progress | None) -> AutoencoderKL:
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=1,
        down_block_types=("DownEncoderBlock2D",) * len(recipe.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(recipe.vae_channels),
        block_out_channels=recipe.vae_channels, sample_size=recipe.resolution,
    )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    vae.train()
    for step in range(1, recipe.vae_steps + 1):
        lr = recipe.vae_lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / recipe.vae_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = _images([world.random_scene(rng) for _ in range(recipe.vae_batch)], recipe.resolution)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = _reconstruction_loss(recon, images, recipe) + recipe.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress and (step % 50 == 0 or step == recipe.vae_steps):
            progress("vae", step, recipe.vae_steps, float(loss))
    return vae.eval().requires_grad_(False)


def _reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Squared error with the shape's pixels weighted up. The backgrounds are grey, white or black and
    cover most of every image, so with a plain mean a VAE first learns light and dark and paints every
    shape in the palette's average colour (orange-brown); the colour is in the shape's pixels only."""
    corner = images[:, :, :1, :1]  # every scene's background shows in its corner
    shape = ((images - corner).abs().amax(dim=1, keepdim=True) > 0.2).float()
    weight = 1.0 + recipe.vae_shape_weight * shape
    return (weight * (recon - images) ** 2).mean() / weight.mean()


@torch.no_grad()
def _encode(vae: AutoencoderKL, scenes: list[world.Scene], px: int) -> torch.Tensor:
    chunks = [vae.encode(_images(scenes[i:i + 256], px)).latent_dist.mean for i in range(0, len(scenes), 256)]
    return torch.cat(chunks)


def _train_unet(recipe: Recipe, stage: int, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                scheduler: DDIMScheduler, latents: torch.Tensor, ids: torch.Tensor, empty: torch.Tensor,
                progress: Progress | None, *,
                evaluate: Callable[[], float] | None, evaluate_every: int) -> None:
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in unet.parameters()]
    alphas = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(recipe.seed + stage)
    steps = recipe.unet_stages[stage]
    unet.train().requires_grad_(True)  # a previous stage ended by freezing both
    text_encoder.train().requires_grad_(True)
    for step in range(1, steps + 1):
        warm = min(1.0, step / recipe.warmup_steps)
        lr = recipe.unet_lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, len(latents), (recipe.unet_batch,), generator=generator)
        x0 = latents[index]
        tokens = ids[index].clone()
        drop = torch.rand(recipe.unet_batch, generator=generator) < recipe.empty_caption_share
        tokens[drop] = empty
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.unet_batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        prediction = unet(noisy, t, text_encoder(tokens).last_hidden_state).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, p in zip(ema, unet.parameters(), strict=True):
                shadow.lerp_(p.detach(), 1 - decay)
        if progress and (step % 50 == 0 or step == steps):
            progress(f"unet stage {stage + 1}", step, steps, float(loss))
        if evaluate is not None and step % evaluate_every == 0:
            with _weights(unet, ema):
                unet.eval()
                text_encoder.eval()
                log.info("step %d: prompt-following %.2f", step, evaluate())
                unet.train()
                text_encoder.train()
    with torch.no_grad():
        for shadow, p in zip(ema, unet.parameters(), strict=True):
            p.copy_(shadow)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)


class _weights:
    """Swap `values` into `module`'s parameters for the duration of a `with` block."""

    def __init__(self, module: torch.nn.Module, values: list[torch.Tensor]) -> None:
        self.module, self.values = module, values
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> None:
        with torch.no_grad():
            for p, v in zip(self.module.parameters(), self.values, strict=True):
                self.saved.append(p.detach().clone())
                p.copy_(v)

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for p, v in zip(self.module.parameters(), self.saved, strict=True):
                p.copy_(v)


@torch.no_grad()
def prompt_following(pipe: StableDiffusionPipeline, *, per_combo: int = 6, steps: int = 10,
                     guidance: float = 7.5, seed: int = 0) -> float:
    """Share of samples, over the held-out combinations, whose shape has the caption's colour."""
    images, prompts = [], []
    for k, combo in enumerate(world.combinations(held_out=True)):
        prompt = world.caption(*combo)
        generators = [torch.Generator().manual_seed(seed + 1000 * k + i) for i in range(per_combo)]
        images += pipe(prompt, num_images_per_prompt=per_combo, num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators, height=64, width=64).images
        prompts += [prompt] * per_combo
    return evaluate.prompt_following(images, prompts)
