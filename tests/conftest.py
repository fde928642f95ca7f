"""Shared fixtures: no network, and tiny random-weight checkpoints built once per session."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub, which reads these once: the tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import contextlib
import json
import logging
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import tqdm

from bot.app import App
from bot.devserver import DiscordDevServer
from bot.offline import offline_bot, offline_config
from pipeline.diffusers_generator import GeneratorSettings
from pipeline.generator import Generator
from pipeline.tiny import (
    build_tiny_checkpoint,
    build_tiny_clipseg,
    build_tiny_inpaint_checkpoint,
    build_tiny_instruct_unet,
)


@dataclass(frozen=True)
class TinyModels:
    sd: Path
    inpaint: Path
    instruct: Path
    clipseg: Path


_EXIT_STATUS = pytest.StashKey[int]()

# tqdm's monitor is a daemon thread that outlives the session (diffusers and transformers draw bars
# too); a daemon thread torn down while the interpreter finalises, with torch's native libraries
# loaded, is a known way to crash at exit. A full run once ended "598 passed" and then SIGSEGV, with
# only tqdm monitors still alive. Bars do not need the monitor (it only corrects stalled miniters).
tqdm.tqdm.monitor_interval = 0


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The CLI's main() installs its own root handler; put pytest's back after every test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    # One thread: results are bit-identical only at a fixed thread count, and the CPU is shared.
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    return TinyModels(
        sd=build_tiny_checkpoint(root / "sd"),
        inpaint=build_tiny_inpaint_checkpoint(root / "inpaint"),
        instruct=build_tiny_instruct_unet(root / "instruct"),
        clipseg=build_tiny_clipseg(root / "clipseg"),
    )


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy world's trained checkpoint (shipped with the project, checked against its manifest)."""
    from pipeline.toyworld import copy_toy_model

    return copy_toy_model(tmp_path_factory.mktemp("toy") / "toy-model")


@pytest.fixture(scope="session")
def colour_model(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with two config values changed so that a random UNet can see colour (for the
    tests where training must learn "reddish beats bluish").

    Its UNet has 32 GroupNorm groups on 32 channels: each channel is normalised on its own, which
    erases a solid colour (a per-channel constant) before any attention layer sees it. One group
    (SD 1.5 has 10 channels per group) keeps the channels' relative levels, and a VAE scaling factor
    of 10 lifts the random VAE's small latents above the diffusion noise at most timesteps.
    """
    folder = tmp_path_factory.mktemp("colour") / "sd"
    shutil.copytree(tiny_models.sd, folder)
    for part, key, value in (("unet", "norm_num_groups", 1), ("vae", "scaling_factor", 10.0)):
        config = folder / part / "config.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | {key: value}))
    return folder


@pytest.fixture(scope="session")
def settings(tiny_models: TinyModels) -> GeneratorSettings:
    return GeneratorSettings(
        model=str(tiny_models.sd),
        scheduler="ddim",
        device="cpu",
        local_files_only=True,
        instruct_model=str(tiny_models.instruct),
        inpaint_model=str(tiny_models.inpaint),
        clipseg_model=str(tiny_models.clipseg),
        cpu_threads=1,
    )


@dataclass(frozen=True)
class World:
    """The loopback server and who and what is in its guild."""

    server: DiscordDevServer
    imagine: int  # a prompt channel (listed in the offline config)
    general: int  # not a prompt channel
    alice: int
    bob: int


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """The loopback Discord server with an #imagine prompt channel, #general, and two users."""
    async with DiscordDevServer() as server:
        yield World(server, imagine=server.add_channel("imagine"), general=server.add_channel("general"),
                    alice=server.add_user("alice"), bob=server.add_user("bob"))


@pytest.fixture
def start_bot(world: World, tiny_models: TinyModels, tmp_path: Path
              ) -> Callable[..., contextlib.AbstractAsyncContextManager[App]]:
    """Start the real bot against the loopback server and the tiny model: `async with start_bot(...) as app`."""

    def start(overrides: dict[str, dict[str, Any]] | None = None, *, start_writer: bool = False,
              data_dir: Path | None = None, generator: Generator | None = None, model: Path | None = None
              ) -> contextlib.AbstractAsyncContextManager[App]:
        config = offline_config(world.server, model or tiny_models.sd, data_dir or tmp_path / "data", overrides)
        return offline_bot(world.server, config, start_writer=start_writer, generator=generator)

    return start



def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without finalising the interpreter, once every report is written and every plugin has
    unconfigured: native libraries loaded in this process (torch's thread pools, the Oxen bindings'
    Rust runtime) have crashed the test runner's exit after a complete, green run (a SIGSEGV after the
    summary line, once in four full runs), turning a passing suite into a failed one. The status is the
    session's own, so a failing test still fails the run."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
