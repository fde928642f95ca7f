"""Running the real bot with no Discord and no model hub: the bundled loopback Discord server and a
tiny random-weight checkpoint. Shared by `refinery demo` and the end-to-end tests, so the demo shows
exactly what the tests prove.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import App, running_app
from bot.config import Config, Secrets, config_from_dict
from bot.devserver import DiscordDevServer
from pipeline.generator import Generator

# Small enough for 2 CPU cores: 64 px, 4 steps, 4 candidates in well under a second.
OFFLINE_SETTINGS: dict[str, dict[str, Any]] = {
    "model": {"scheduler": "ddim", "device": "cpu", "local_files_only": True},
    "generation": {"default_steps": 4, "max_steps": 20, "default_width": 64, "default_height": 64,
                   "min_size": 64, "max_size": 256, "progress_interval_s": 0.2},
    "storage": {"commit_interval_s": 0.5, "commit_batch": 500},
    "discord": {"guild_ready_timeout_s": 0.1, "prompt_channels": ["imagine"]},
    "dashboard": {"listen": "127.0.0.1:0"},  # any free port: tests and demos run side by side
}


def offline_config(server: DiscordDevServer, model_dir: Path, data_dir: Path,
                   overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """A config that points the bot at `server`, loads `model_dir` and keeps data in `data_dir`."""
    raw: dict[str, dict[str, Any]] = {name: dict(values) for name, values in OFFLINE_SETTINGS.items()}
    raw["model"]["id"] = str(model_dir)
    raw["storage"]["data_dir"] = str(data_dir)
    raw["discord"] |= {"api_base": server.api_base, "gateway_url": server.gateway_url}
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


@contextlib.asynccontextmanager
async def offline_bot(server: DiscordDevServer, config: Config, *, generator: Generator | None = None,
                      start_writer: bool = True) -> AsyncIterator[App]:
    """The whole bot (`running_app`), connected to `server` and ready."""
    secrets = Secrets(discord_token=server.bot_token)
    async with running_app(config, secrets, generator=generator, start_writer=start_writer) as app:
        await app.wait_ready(timeout=60)
        await server.wait_until_identified()
        yield app
