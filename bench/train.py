"""Benchmark: seconds per optimizer step and peak memory of LoRA preference training (issue: refinery train).

    python -m bench.train [--method dpo|kto] [--batch 8] [--rank 8] [--steps 10] [--resolution 512]
                          [--gradient-checkpointing] [--peak-tflops 989] [--cpu-smoke]

With CUDA: the real Stable Diffusion 1.5 architecture with random weights (seed 0, built by
bench/gpu.py's `build_checkpoint`: UNet (320, 640, 1280, 1280) × 2 layers, cross-attention 768,
8 heads; SD's VAE; a 12-layer 768-wide CLIP text encoder) at 512² (64² latents), batch 8 pairs,
rank 8, bf16 autocast — saved with `save_pretrained` and loaded through the trainer's own
`from_pretrained`. Without CUDA, or with --cpu-smoke: the tiny checkpoint of pipeline/tiny.py at 64²
on one CPU thread (what the tests train), batch 4 pairs, rank 4.

Printed: seconds per optimizer step (median over --steps after 2 warm-up steps), examples/s, peak
memory (CUDA max_memory_allocated; the estimate of pipeline/training/memory.py beside it), FLOPs of
one step counted with torch.utils.flop_counter (adapted forward, backward and the reference forward;
recomputation included with checkpointing), achieved TFLOP/s and their fraction of --peak-tflops
(989: H100/H200 dense bf16; on a CPU the fraction only shows how far it is from such a GPU).
"""

# ruff: noqa: E402  (sys.path is set before the imports that read it)
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights, saved locally: never reach a model hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
# `python bench/train.py` puts bench/ first on sys.path, where bench/queue.py would shadow the standard
# library's queue (torch imports it); the repository root goes there instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers.utils import logging as transformers_logging

from bench.gpu import SD15, build_checkpoint
from pipeline.tiny import build_tiny_checkpoint
from pipeline.training import LoraTrainer, TrainSettings, estimate_training_bytes
from storage.training_data import FeedbackImage, PreferencePair

WARMUP_STEPS = 2


def examples(folder: Path, method: str, count: int, resolution: int) -> list[PreferencePair] | list[FeedbackImage]:
    """`count` pairs (or twice as many liked/disliked images) of random-pixel PNGs, 4 prompts."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def png(name: str) -> Path:
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(path)
        return path

    pairs = [PreferencePair(f"a photograph, prompt {i % 4}", png(f"{i}w"), png(f"{i}l"), f"r{i}", 1)
             for i in range(count)]
    if method == "dpo":
        return pairs
    return [image for p in pairs for image in (FeedbackImage(p.caption, p.winner, True, p.round_id, 1),
                                               FeedbackImage(p.caption, p.loser, False, p.round_id, -1))]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(trainer: LoraTrainer, steps: int) -> dict[str, float]:
    for _ in range(WARMUP_STEPS):  # CUDA context, cuBLAS/cuDNN handles and autotuning, allocator growth
        trainer.step()
    times = []
    for _ in range(steps):
        _sync()
        started = time.perf_counter()
        trainer.step()
        _sync()
        times.append(time.perf_counter() - started)
    with FlopCounterMode(display=False) as counter:
        trainer.step()
    return {"step_s": statistics.median(times), "min_s": min(times), "flops": float(counter.get_total_flops())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("dpo", "kto"), default="dpo")
    parser.add_argument("--batch", type=int, default=None, help="examples per step (default: 8 on CUDA, 4 on CPU)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: 8 on CUDA, 4 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default: 10)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 on CUDA, 64 on CPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 TFLOP/s the achieved rate is compared with (default: 989, H100/H200)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the tiny checkpoint on one CPU thread")
    args = parser.parse_args(argv)
    for logging_module in (diffusers_logging, transformers_logging):
        logging_module.set_verbosity_error()
        logging_module.disable_progress_bar()
    on_cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not on_cuda:
        torch.set_num_threads(1)  # two threads were ~10× slower on shared cores (docs: notes/training.md)
    settings = TrainSettings(method=args.method, steps=1_000_000, rank=args.rank or (8 if on_cuda else 4),
                             batch=args.batch or (8 if on_cuda else 4),
                             resolution=args.resolution or (512 if on_cuda else 64), lr=1e-5,
                             gradient_checkpointing=args.gradient_checkpointing).check()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="refinery-bench-train-") as tmp:
        if on_cuda:
            model = build_checkpoint(Path(tmp) / "sd15", SD15, torch.bfloat16, torch.device("cuda"))
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            model = build_tiny_checkpoint(Path(tmp) / "tiny")
        built_s = time.monotonic() - started
        data = examples(Path(tmp) / "images", args.method, 2 * settings.batch, settings.resolution)
        loading = time.monotonic()
        trainer = LoraTrainer.load(str(model), data, [], settings, device="cuda" if on_cuda else "cpu")
        load_s = time.monotonic() - loading
        estimate = estimate_training_bytes(trainer.pipe, settings)
        measured = measure(trainer, args.steps)
        peak = torch.cuda.max_memory_allocated() if on_cuda else None
        device = torch.cuda.get_device_name() if on_cuda else f"CPU, {torch.get_num_threads()} thread"

    architecture = "SD 1.5 architecture, random weights" if on_cuda else "tiny checkpoint (pipeline/tiny.py)"
    unit = "pairs" if args.method == "dpo" else "images"
    samples = settings.batch * (2 if args.method == "dpo" else 1)
    step_s, flops = measured["step_s"], measured["flops"]
    achieved = flops / step_s / 1e12
    print(f"device: {device}; torch {torch.__version__}; {architecture}; {trainer.dtype}")
    print(f"{args.method}: batch {settings.batch} {unit} ({samples} UNet samples with grad + {samples} reference), "
          f"rank {settings.rank}, {settings.resolution}², gradient checkpointing "
          f"{'on' if settings.gradient_checkpointing else 'off'}")
    print(f"built the checkpoint in {built_s:.1f} s, loaded and encoded in {load_s:.1f} s")
    print(f"seconds per optimizer step: median {step_s:.4f} (min {measured['min_s']:.4f}) over {args.steps}; "
          f"{settings.batch / step_s:.1f} {unit}/s")
    print(f"FLOPs per step: {flops / 1e9:,.1f} GFLOP; achieved {achieved * 1e3:,.2f} GFLOP/s = "
          f"{achieved / args.peak_tflops:.3g} of {args.peak_tflops:g} TFLOP/s")
    if peak is not None:
        print(f"peak GPU memory: {peak / 2**30:.2f} GiB (estimate before loading: {estimate / 2**30:.2f} GiB, "
              f"{estimate / peak:.2f}× the peak)")
    else:
        print(f"peak GPU memory: n/a on the CPU (the CUDA estimate for this run would be {estimate / 2**30:.2f} GiB)")
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
