"""`refinery toy-model --out DIR [--rebuild]`: the toy world's trained Stable Diffusion checkpoint.

Without --rebuild it copies the checkpoint that ships with the project (checked against its manifest)
in a moment; with --rebuild it trains one from scratch by the recipe (about half an hour on 2 CPU cores;
`bench/toyworld.py` times it). Point `[model] id` at DIR and set 64×64 images to run the bot on it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    toy = commands.add_parser(
        "toy-model", help="a small Stable Diffusion checkpoint trained on a world of coloured shapes",
        description=__doc__.split("\n\n")[0])
    toy.add_argument("--out", type=Path, required=True, help="the folder to write the checkpoint to")
    toy.add_argument("--rebuild", action="store_true",
                     help="train it from scratch instead of copying the shipped one (about 30 minutes on a CPU)")
    toy.add_argument("--threads", type=int, default=1, help="CPU threads for torch while rebuilding (default: 1)")


def run_toy_model(args: argparse.Namespace) -> int:
    from pipeline.toyworld import TRAIN_DEFAULTS, ToyModelDamaged, copy_toy_model, rebuild_toy_model

    out: Path = args.out
    if not args.rebuild:
        try:
            copy_toy_model(out)
        except ToyModelDamaged as error:
            print(f"refinery toy-model: the shipped checkpoint is damaged: {error}", file=sys.stderr)
            return 2
        except FileExistsError as error:
            print(f"refinery toy-model: {error}", file=sys.stderr)
            return 2
        print(f"toy model: {out}")
        print(f"  use it with [model] id = \"{out}\", local_files_only = true, scheduler = \"ddim\", "
              "[generation] default_width = default_height = 64, default_steps = 10")
        print(f"  refinery train on it defaults to: {TRAIN_DEFAULTS}")
        return 0

    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()

    def progress(phase: str, step: int, total: int, loss: float) -> None:
        if step % 500 == 0 or step == total:
            print(f"  {phase} {step}/{total} loss {loss:.4f} ({time.monotonic() - started:.0f} s)", flush=True)

    print(f"training the toy model into {out} …", flush=True)
    quality = rebuild_toy_model(out, progress=progress)
    print(f"toy model: {out} in {time.monotonic() - started:.0f} s; prompt-following on held-out captions "
          f"{quality:.0%} (chance {1 / 6:.0%})")
    return 0
