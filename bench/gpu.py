"""Benchmark: four candidates on the GPU, plain diffusers against Refinery's path (issue #7).

    python -m bench.gpu [--steps 25,50] [--runs 5] [--compile-mode default] [--peak-tflops 790]
                        [--cache-dir DIR] [--no-restart] [--cpu-smoke]

Builds the real Stable Diffusion 1.5 architecture with random weights (`torch.manual_seed(0)`):
UNet (320, 640, 1280, 1280) × 2 layers, cross-attention 768, 8 heads; SD's AutoencoderKL; the
ViT-L/14 CLIP text encoder (768 wide, 12 layers); a DPM-Solver++ scheduler; the tokenizer of
pipeline/tiny.py (byte-level, 514 ids, all below the 49408 of the real vocabulary). It saves them
with `save_pretrained` and loads them back twice, so both sides go through their real loading code:

    plain     StableDiffusionPipeline.from_pretrained(..., torch_dtype=float16): diffusers' default
              attention (SDPA), no compile, no channels_last, no fused QKV
    refinery  DiffusersGenerator with its defaults on CUDA (pipeline/acceleration.py)

Printed: seconds for 4 candidates of 512×512 at each step count (median of --runs after warm-up;
Refinery's pipeline time and its time with the PNG encoding a job also pays), images/s with 4
requests of 4 (16 images per call, generate_batch), compile and warm-up seconds (first run, second
run, and a second process start reusing the compile cache), peak GPU memory of each side, the FLOP
floor (UNet FLOPs of one step counted with torch.utils.flop_counter, × steps, over --peak-tflops)
and the ratio to it, and the largest pixel difference of Refinery's images from plain ones for the
same seeds. Without CUDA it prints so and exits 0; --cpu-smoke runs everything on the CPU with a
tiny architecture, 64×64 and 2 steps (compile through the "eager" backend), to prove the code path.
"""

# ruff: noqa: E402  (the environment and sys.path are set before the imports that read them)
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights, saved locally: never reach a model hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
# `python bench/gpu.py` puts bench/ first on sys.path, where bench/queue.py would shadow the standard
# library's queue (torch imports it); the repository root goes there instead, for `pipeline`.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

import argparse
import gc
import io
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from pipeline.acceleration import Acceleration
from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings
from pipeline.requests import GenerationRequest
from pipeline.tiny import build_tiny_checkpoint

PROMPT = "a red fox in the snow, golden hour, highly detailed"
SEEDS = (0, 1, 2, 3)
GUIDANCE = 7.5


@dataclass(frozen=True)
class Shape:
    """The architecture's widths and the image size: SD 1.5's, or a tiny one for --cpu-smoke."""

    unet_channels: tuple[int, ...]
    head_dim: int
    vae_channels: tuple[int, ...]
    text_width: int
    text_layers: int
    text_heads: int
    text_ffn: int
    size: int


SD15 = Shape((320, 640, 1280, 1280), 8, (128, 256, 512, 512), 768, 12, 12, 3072, 512)
TINY = Shape((32, 64, 64, 64), 4, (8, 16, 16, 16), 32, 2, 4, 37, 64)


def build_checkpoint(folder: Path, shape: Shape, dtype: torch.dtype, device: torch.device) -> Path:
    """Random weights (seed 0) in SD 1.5's layout, written with save_pretrained."""
    tokenizer = CLIPTokenizer.from_pretrained(build_tiny_checkpoint(folder.parent / "tiny") / "tokenizer")
    blocks = len(shape.unet_channels)
    torch.manual_seed(0)
    with device:  # initialising 860 M UNet weights is minutes on a CPU, a second on a GPU
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=shape.text_width, intermediate_size=shape.text_ffn,
            num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads, max_position_embeddings=77,
            hidden_act="quick_gelu", projection_dim=shape.text_width, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        unet = UNet2DConditionModel(
            sample_size=shape.size // 8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=shape.unet_channels, cross_attention_dim=shape.text_width,
            attention_head_dim=shape.head_dim,
            down_block_types=("CrossAttnDownBlock2D",) * (blocks - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (blocks - 1))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=shape.vae_channels, layers_per_block=2,
            latent_channels=4, sample_size=shape.size, norm_num_groups=min(32, shape.vae_channels[0]))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, algorithm_type="dpmsolver++")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(folder)
    return folder


def prompt(k: int) -> str:
    """Request k's prompt: the batched calls join different prompts, as different users' would."""
    return PROMPT if k == 0 else f"{PROMPT}, variation {k}"


def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        _sync()
        started = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def _reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def unet_step_flops(pipe: Any, shape: Shape, images: int) -> int:
    """FLOPs of one UNet call for `images` candidates with classifier-free guidance (batch 2 × images)."""
    unet = pipe.unet
    latents = torch.randn(2 * images, 4, shape.size // 8, shape.size // 8, device=unet.device, dtype=unet.dtype)
    context = torch.randn(2 * images, 77, shape.text_width, device=unet.device, dtype=unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(latents, torch.tensor(500, device=unet.device), encoder_hidden_states=context)
    return counter.get_total_flops()


def pixels_of(images: list[Image.Image] | tuple[bytes, ...]) -> np.ndarray:
    return np.stack([np.asarray((Image.open(io.BytesIO(i)) if isinstance(i, bytes) else i).convert("RGB"),
                                dtype=np.int16) for i in images])


def plain_side(folder: Path, shape: Shape, args: argparse.Namespace, device: torch.device,
               dtype: torch.dtype) -> dict[str, Any]:
    """Plain diffusers: load, warm up, time 4 candidates per step count and a call of 16, count FLOPs."""
    _reset_peak()
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int, prompts: int = 1) -> list[Image.Image]:
        seeds = [s + 4 * k for k in range(prompts) for s in SEEDS]
        return pipe([prompt(k) for k in range(prompts)], num_inference_steps=steps, guidance_scale=GUIDANCE,
                    num_images_per_prompt=4, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                    width=shape.size, height=shape.size).images

    run(args.steps[0])  # warm-up: CUDA context, cuBLAS/cuDNN handles
    measured: dict[str, Any] = {"seconds": {}, "images": {}}
    for steps in args.steps:
        measured["seconds"][steps] = median_seconds(lambda s=steps: run(s), args.runs)
        measured["images"][steps] = pixels_of(run(steps))
    measured["batch_s"] = median_seconds(lambda: run(args.steps[0], prompts=4), args.runs)
    measured["flops_per_step"] = unet_step_flops(pipe, shape, len(SEEDS))
    measured["peak_gib"] = _peak_gib()
    return measured  # the pipeline goes with this frame; the next _reset_peak frees its memory


def refinery_settings(folder: Path, args: argparse.Namespace, shape: Shape, cache_dir: Path) -> GeneratorSettings:
    smoke = {"devices": ("cpu",), "compile": "on", "compile_backend": "eager"} if args.cpu_smoke else {}
    acceleration = Acceleration(compile_mode=args.compile_mode, compile_cache_dir=str(cache_dir),
                                warmup_width=shape.size, warmup_height=shape.size, warmup_count=len(SEEDS),
                                warmup_batch=4, warmup_guidance=GUIDANCE, **smoke)
    return GeneratorSettings(model=str(folder), scheduler="dpm++", device="cpu" if args.cpu_smoke else "cuda",
                             local_files_only=True, acceleration=acceleration)


def refinery_side(folder: Path, shape: Shape, args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    """Refinery's path through DiffusersGenerator: load, warm up (compile), time like the plain side."""
    _reset_peak()
    started = time.perf_counter()
    generator = DiffusersGenerator(refinery_settings(folder, args, shape, cache_dir)).load()
    measured: dict[str, Any] = {"load_s": time.perf_counter() - started, "seconds": {}, "pipeline_s": {},
                                "images": {}, "active": generator.speedups.active.describe()}
    generator.warm_up()
    measured.update(warmup_s=generator.warmup_s, warm_s=generator.warm_s)

    def request(steps: int, k: int = 0) -> GenerationRequest:
        return GenerationRequest(prompt=prompt(k), seeds=tuple(s + 4 * k for s in SEEDS), steps=steps,
                                 guidance=GUIDANCE, width=shape.size, height=shape.size)

    for steps in args.steps:
        elapsed: list[float] = []

        def one(s: int = steps, into: list[float] = elapsed) -> None:
            into.append(generator.generate(request(s)).elapsed_s)

        measured["seconds"][steps] = median_seconds(one, args.runs)
        measured["pipeline_s"][steps] = statistics.median(elapsed)  # without the PNG encoding
        measured["images"][steps] = pixels_of(generator.generate(request(steps)).images)
    batch = [request(args.steps[0], k) for k in range(4)]
    measured["batch_s"] = median_seconds(lambda: generator.generate_batch(batch), args.runs)
    measured["peak_gib"] = _peak_gib()
    return measured  # the generator goes with this frame; the next _reset_peak frees its memory


def restart(folder: Path, cache_dir: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """A second process: load and warm up again, with the compile cache the first one filled."""
    command = [sys.executable, str(Path(__file__).resolve()), "--restart-child", str(folder), str(cache_dir),
               "--compile-mode", args.compile_mode, *(["--cpu-smoke"] if args.cpu_smoke else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        print(f"second process failed ({done.returncode}): {done.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def restart_child(folder: Path, cache_dir: Path, args: argparse.Namespace) -> int:
    shape = TINY if args.cpu_smoke else SD15
    started = time.perf_counter()
    generator = DiffusersGenerator(refinery_settings(folder, args, shape, cache_dir)).load()
    load_s = time.perf_counter() - started
    generator.warm_up()
    print(json.dumps({"load_s": load_s, "warmup_s": generator.warmup_s, "warm_s": generator.warm_s}))
    return 0


def report(args: argparse.Namespace, shape: Shape, plain: dict[str, Any], ours: dict[str, Any],
           again: dict[str, Any] | None, device: str) -> None:
    size = f"{shape.size}×{shape.size}"
    architecture = "tiny architecture (--cpu-smoke)" if args.cpu_smoke else "SD 1.5 architecture"
    print(f"device: {device}; torch {torch.__version__}; {architecture}, random weights; "
          f"{len(SEEDS)} candidates of {size}, guidance {GUIDANCE}, DPM-Solver++; "
          f"median of {args.runs} runs after warm-up")
    print(f"refinery speed-ups: {ours['active']}; compile mode {args.compile_mode}")
    per_step = plain["flops_per_step"]
    print(f"UNet FLOPs per step, 4 candidates with guidance: {per_step / 1e9:,.1f} GFLOP "
          f"({per_step / len(SEEDS) / 1e9:,.1f} per image); floor = FLOPs / {args.peak_tflops:g} TFLOP/s")
    print(f"{'steps':>5} {'plain s':>9} {'refinery s':>11} {'+PNG s':>8} {'speed-up':>9} {'floor s':>8} "
          f"{'refinery/floor':>15} {'max |Δpx|':>10} {'Δpx>2':>8}")
    for steps in args.steps:
        floor = per_step * steps / (args.peak_tflops * 1e12)
        pipeline_s, wall_s = ours["pipeline_s"][steps], ours["seconds"][steps]
        difference = np.abs(ours["images"][steps] - plain["images"][steps])
        print(f"{steps:>5} {plain['seconds'][steps]:>9.3f} {pipeline_s:>11.3f} {wall_s:>8.3f} "
              f"{plain['seconds'][steps] / pipeline_s:>8.2f}× {floor:>8.3f} {pipeline_s / floor:>14.2f}× "
              f"{int(difference.max()):>10} {(difference > 2).mean():>8.3%}")
    steps = args.steps[0]
    floor16 = 4 * per_step * steps / (args.peak_tflops * 1e12)
    print(f"batched, 4 requests × 4 = 16 images per call at {steps} steps: plain {16 / plain['batch_s']:.2f} images/s, "
          f"refinery {16 / ours['batch_s']:.2f} images/s (floor {16 / floor16:.1f} images/s)")
    print(f"refinery load {ours['load_s']:.1f} s; warm-up (4 candidates, then a batch of 4 requests, "
          f"{args.warmup_steps} steps): first {ours['warmup_s']:.1f} s (compiling), second {ours['warm_s']:.2f} s")
    if again is not None:
        print(f"second process, same compile cache: load {again['load_s']:.1f} s, warm-up first "
              f"{again['warmup_s']:.1f} s, second {again['warm_s']:.2f} s")
    if torch.cuda.is_available() and not args.cpu_smoke:
        print(f"peak GPU memory: plain {plain['peak_gib']:.2f} GiB, refinery {ours['peak_gib']:.2f} GiB")
    images = plain["images"][args.steps[0]], ours["images"][args.steps[0]]
    print(f"pixel standard deviation (0 would mean blank images): plain {images[0].std():.1f}, "
          f"refinery {images[1].std():.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="25,50", help="step counts, comma-separated (default: 25,50)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement; the median is shown")
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="dense fp16/bf16 TFLOP/s the floor is computed with (default: 790, an H100)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="compile cache to use and keep (default: a fresh temporary folder, so compiling is cold)")
    parser.add_argument("--no-restart", action="store_true", help="skip the second process start")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny architecture on the CPU, 2 steps, 64×64")
    parser.add_argument("--restart-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = [int(s) for s in str(args.steps).split(",")]
    args.warmup_steps = Acceleration().warmup_steps
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if args.restart_child:
        return restart_child(*args.restart_child, args)
    if args.cpu_smoke:
        args.steps, args.runs = [2], 1
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (python bench/gpu.py --cpu-smoke runs the code path on the CPU)")
        return 0
    shape = TINY if args.cpu_smoke else SD15
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    dtype = torch.float32 if args.cpu_smoke else torch.float16
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="refinery-bench-gpu-") as tmp:
        folder = build_checkpoint(Path(tmp) / "sd15", shape, dtype, device)
        cache_dir = args.cache_dir or Path(tmp) / "torch-cache"
        print(f"built the checkpoint in {time.monotonic() - started:.0f} s", file=sys.stderr)
        plain = plain_side(folder, shape, args, device, dtype)
        ours = refinery_side(folder, shape, args, cache_dir)
        again = None if args.no_restart else restart(folder, cache_dir, args)
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        report(args, shape, plain, ours, again, name)
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
