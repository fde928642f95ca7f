"""A start-up log without warnings that look like failures but are harmless; real warnings still show."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from bot.logs import silence_harmless_warnings
from tests.bot.test_clean_stop import _start, _stopped_within
from tests.bot.test_crash_safety import wait_until, write_config
from tests.conftest import TinyModels, World

HARMLESS = ("requires torchvision (not installed)", "should be kept in float32: []", "accelerate",
            "PyNaCl is not installed", "davey is not installed", "voice will NOT be supported")


async def test_startup_log_has_no_harmless_noise(world: World, tiny_models: TinyModels, tmp_path: Path) -> None:
    """`refinery run` from start to a clean stop logs none of the known-harmless warnings (torchvision
    fallbacks, the empty float32 list, the accelerate advice, voice libraries)."""
    config = tmp_path / "config.toml"
    write_config(config, world, tiny_models)
    log_path = tmp_path / "bot.log"
    bot = _start(config, world.server.bot_token, log_path)
    try:
        await world.server.wait_until_identified(timeout=90)
        await wait_until(lambda: "connected as" in log_path.read_text(), what="the bot to be ready")
        await _stopped_within(bot, 60)
    finally:
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()
    log = log_path.read_text()
    assert bot.returncode == 0, log[-3000:]
    noise = [line for line in log.splitlines() if any(text in line for text in HARMLESS)]
    assert noise == []


def test_real_warnings_of_those_loggers_still_show() -> None:
    """Only the exact harmless wording is dropped: the same warning naming real float32 modules stays."""
    silence_harmless_warnings()
    logger = logging.getLogger("diffusers.models.modeling_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("There are modules in UNet2DConditionModel that should be kept in float32: []. Casting")
        logger.warning("There are modules in T5 that should be kept in float32: ['wo']. Casting")
    finally:
        logger.removeHandler(handler)
    assert seen == ["There are modules in T5 that should be kept in float32: ['wo']. Casting"]
