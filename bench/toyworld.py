"""Benchmark: the toy world — how long the toy model takes to train and how well it follows captions, then the
loop's data efficiency: the shift a community's votes produce, and the arena's verdict, by voted rounds.

    python -m bench.toyworld [--rounds 24,48,96] [--taste large] [--arena-rounds 40] [--rebuild]

1. The toy model: with --rebuild, trained from scratch here (`refinery toy-model --rebuild`, one CPU
   thread) and timed; otherwise the seconds its shipped recipe.json records. Prompt-following on the
   held-out captions (64×64, DDIM 10 steps, guidance 7.5; chance 1 in 6).
2. For each number of voted rounds: a simulated community with the taste votes that many rounds through
   the real bot on the loopback Discord server; `refinery train --steps 300` (DPO, the model's defaults);
   16 evaluation rounds (64 same-seed pairs) before and after `/model use`: pairs that moved toward the
   taste, mean difference, sign-test p, prompt-following and variety; then `/arena start` with the adapter
   and --arena-rounds rounds voted by the same community: `/arena results`' verdict.
"""

# ruff: noqa: E402  (sys.path is set before the imports that read it)
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

import argparse
import asyncio
import json
import tempfile
import time

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from bot.community import COMMUNITY_SETTINGS, draw, play, slash_text, train_and_use
from bot.devserver import MANAGE_GUILD, DiscordDevServer
from bot.offline import offline_bot, offline_config
from pipeline.toyworld import SHIPPED, copy_toy_model, evaluate, rebuild_toy_model
from pipeline.toyworld.build import prompt_following
from pipeline.toyworld.community import TASTES, community, round_prompts

EVAL_PROMPTS = [(prompt, 5000 + i) for i, prompt in enumerate(round_prompts(16, held_out=True, seed=3))]


def model_line(folder: Path, rebuild: bool) -> Path:
    if rebuild:
        started = time.perf_counter()
        quality = rebuild_toy_model(folder)
        print(f"toy model rebuilt in {time.perf_counter() - started:.0f} s (one CPU thread); "
              f"prompt-following {quality:.0%} (chance 17 %)")
        return folder
    copy_toy_model(folder)
    seconds = json.loads((SHIPPED / "recipe.json").read_text())["seconds"]
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    print(f"toy model (shipped): trained in {seconds:.0f} s when built; prompt-following on held-out captions "
          f"{prompt_following(pipe, per_combo=8):.0%} of 64 samples (chance 17 %)")
    return folder


async def one_size(model: Path, folder: Path, taste: str, rounds: int, arena_rounds: int) -> None:
    folder.mkdir(parents=True)
    async with DiscordDevServer() as server:
        channel = server.add_channel("imagine")
        asker, mod = server.add_user("asker"), server.add_user("mod", permissions=MANAGE_GUILD)
        voters = community([server.add_user(f"voter{i}") for i in range(3)], taste, noise=0.1)
        config = offline_config(server, model, folder / "data", COMMUNITY_SETTINGS)
        config_file = folder / "config.toml"
        config_file.write_text(f'[model]\nid = "{model}"\nlocal_files_only = true\n\n[storage]\ndata_dir = "data"\n')
        async with offline_bot(server, config) as app:
            started = time.perf_counter()
            await play(server, app, channel, asker, voters, round_prompts(rounds, held_out=False), seed=rounds)
            voted_s = time.perf_counter() - started
            base = await draw(server, app, channel, asker, EVAL_PROMPTS)
            started = time.perf_counter()
            await train_and_use(server, config_file, "bench", moderator=mod, channel=channel,
                                train_args=["--steps", "300"])
            train_s = time.perf_counter() - started
            adapted = await draw(server, app, channel, asker, EVAL_PROMPTS)
            await slash_text(server, "model off", {}, mod, channel)
            await slash_text(server, "arena start", {"name": "bench", "fraction": 1.0}, mod, channel)
            await play(server, app, channel, asker, voters, round_prompts(arena_rounds, held_out=True, seed=7),
                       seed=rounds + 1)
            verdict = await slash_text(server, "arena results", {}, asker, channel)
    images = [i for r in base for i in r.images], [i for r in adapted for i in r.images]
    prompts = [r.prompt for r in base for _ in r.images]
    moved = evaluate.shift(TASTES[taste], *images)
    print(f"\n{rounds} voted rounds ({voted_s:.0f} s to play, {train_s:.0f} s to train 300 steps):")
    print(f"  {moved.line()}")
    following = [evaluate.prompt_following(i, prompts) for i in images]
    variety = [evaluate.variety([r.images for r in rounds]) for rounds in (base, adapted)]
    print(f"  prompt-following {following[0]:.0%} → {following[1]:.0%}; variety {variety[0]:.1f} → {variety[1]:.1f}")
    print("  arena after " + f"{arena_rounds} rounds: " + verdict.replace("\n", "\n    ").replace("**", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", default="24,48,96")
    parser.add_argument("--taste", default="large", choices=sorted(TASTES))
    parser.add_argument("--arena-rounds", type=int, default=40)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    diffusers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        model = model_line(Path(tmp) / "toy", args.rebuild)
        for rounds in (int(n) for n in args.rounds.split(",")):
            asyncio.run(one_size(model, Path(tmp) / f"r{rounds}", args.taste, rounds, args.arena_rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
