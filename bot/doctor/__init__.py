"""`refinery doctor [--config]`: is this machine ready to run the bot? One line per check; exit 1 if any fails.

Checks, in order: the config, the token's presence and shape (never printed), Discord (login, the
Message Content intent, the servers the bot is in and its permissions there, the configured prompt
channels and moderator roles), the GPU and dtype, the base model and each optional model (inpaint,
instruct, CLIPSeg, safety checker) loading for real, trained adapters, disk space, the data directory
and journal, the Oxen repository (without ever opening it in this process), Redis when configured,
and the export key. A check that cannot run says why and the others go on; nothing prints a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bot.config import Config, Secrets
from bot.doctor._discord import discord_checks, token_check
from bot.doctor._models import adapter_check, device_check, model_checks
from bot.doctor._result import CheckResult, Status, fail, first_line, ok
from bot.doctor._storage import data_dir_check, disk_check, export_key_check, oxen_check, redis_check

__all__ = ["CheckResult", "Status", "collect", "run_doctor"]

log = logging.getLogger(__name__)


async def collect(config: Config, secrets: Secrets, *, config_path: Path | None,
                  emit: Callable[[CheckResult], None] = lambda _: None) -> list[CheckResult]:
    """Run every check, calling `emit` as each result comes (a model can take a while to load)."""
    results: list[CheckResult] = []

    def add(found: CheckResult | list[CheckResult]) -> None:
        for result in found if isinstance(found, list) else [found]:
            results.append(result)
            emit(result)

    add(ok("config", str(config_path.resolve()) if config_path else "no config file: every default"))
    add(token_check(secrets.discord_token))
    add(await _guarded("discord", discord_checks(config, secrets.discord_token)))
    blocking: tuple[tuple[str, Callable[[], CheckResult | list[CheckResult]]], ...] = (
        ("gpu", lambda: device_check(config)),
        ("model", lambda: model_checks(config)),
        ("adapters", lambda: adapter_check(config)),
        ("disk", lambda: disk_check(config)),
        ("data directory", lambda: data_dir_check(config)),
        ("oxen", lambda: oxen_check(config)),
        ("redis", lambda: redis_check(config)),
        ("export key", lambda: export_key_check(secrets.export_key)),
    )
    for name, check in blocking:
        add(await _guarded(name, asyncio.to_thread(check)))
    return results


async def _guarded(name: str, check: object) -> CheckResult | list[CheckResult]:
    """A check that raises is one failed line (the traceback goes to the debug log only)."""
    try:
        return await check  # type: ignore[misc]
    except Exception as error:
        log.debug("check %s raised", name, exc_info=True)
        return fail(name, f"the check itself failed: {first_line(error)}")


def run_doctor(config: Config, secrets: Secrets, *, config_path: Path | None, out: TextIO) -> int:
    """Print the checklist to `out`; 0 when nothing failed, 1 otherwise."""
    hidden = (secrets.discord_token, secrets.oxen_auth_token, secrets.export_key)

    def emit(result: CheckResult) -> None:
        print(result.line(hidden), file=out, flush=True)

    results = asyncio.run(collect(config, secrets, config_path=config_path, emit=emit))
    failed = [r.name for r in results if r.status is Status.FAIL]
    warned = sum(r.status is Status.WARN for r in results)
    if failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}", file=out)
        return 1
    print(f"\nall checks passed{f' ({warned} warning(s))' if warned else ''}: `refinery run` should start", file=out)
    return 0
