"""Stopping `refinery run` (a real process): bounded whatever Discord does, and nothing left out of Oxen."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.bot.test_crash_safety import ROOT, journal_counts, wait_until, write_config
from tests.conftest import TinyModels, World
from tests.oxen_reader import committed_rows

# discord.py's reconnect back-off draws each sleep at random, up to 2**10 s after a long outage, and a
# close() does not wake it. Pinned at 120 s (a draw it really makes) so the test meets it every time.
_PINNED_BACKOFF = """
import sys
import discord.backoff
discord.backoff.ExponentialBackoff.delay = lambda self: 120.0
from bot.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _start(config: Path, token: str, log_path: Path, *, pin_backoff: bool = False) -> subprocess.Popen[bytes]:
    """`refinery run` as a real process, its log (stderr) in `log_path`."""
    env = os.environ | {"DISCORD_TOKEN": token, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    code = ["-c", _PINNED_BACKOFF] if pin_backoff else ["-m", "bot"]
    with open(log_path, "wb") as log_file:
        return subprocess.Popen([sys.executable, *code, "run", "--config", str(config)], cwd=config.parent,
                                env=env, stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True)


async def _stopped_within(bot: subprocess.Popen[bytes], seconds: float) -> float:
    """SIGTERM, then the seconds it took to exit; killed (and failed) if it takes longer than `seconds`."""
    started = time.monotonic()
    bot.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(bot.wait, timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(bot.pid, signal.SIGKILL)
        bot.wait()
        raise AssertionError(f"still running {seconds:.0f} s after SIGTERM") from None
    return time.monotonic() - started


async def test_sigterm_is_bounded_while_discord_is_unreachable(world: World, tiny_models: TinyModels,
                                                               tmp_path: Path) -> None:
    """Discord goes away and discord.py sleeps before reconnecting: SIGTERM still ends `refinery run`
    with status 0 in seconds (systemd's stop timeout is 90 s), not when the back-off sleep ends."""
    config = tmp_path / "config.toml"
    write_config(config, world, tiny_models)
    log_path = tmp_path / "bot.log"
    bot = _start(config, world.server.bot_token, log_path, pin_backoff=True)
    try:
        await world.server.wait_until_identified(timeout=90)
        await world.server.close()  # Discord unreachable: the gateway drops the bot, connects are refused
        await wait_until(lambda: "Attempting a reconnect in 120.00s" in log_path.read_text(), timeout=90,
                         what="discord.py's reconnect back-off")
        seconds = await _stopped_within(bot, 30)
    finally:
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()
    log = log_path.read_text()
    assert bot.returncode == 0, log[-3000:]
    assert seconds < 20, f"stopping took {seconds:.1f} s"
    assert "stopped in" in log, log[-3000:]


async def test_clean_stop_commits_everything_journaled(world: World, tiny_models: TinyModels, tmp_path: Path
                                                       ) -> None:
    """A round and a vote made just before SIGTERM (the commit interval is an hour) are in the Oxen
    tables once the process has exited, and the writer's status says nothing is pending."""
    config = tmp_path / "config.toml"
    write_config(config, world, tiny_models)
    data, log_path = tmp_path / "data", tmp_path / "bot.log"
    bot = _start(config, world.server.bot_token, log_path)
    try:
        await world.server.wait_until_identified(timeout=90)
        interaction = await world.server.invoke_slash("imagine", {"prompt": "a quiet harbour"},
                                                      user_id=world.alice, channel_id=world.imagine)
        await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4),
                                   timeout=90)
        await world.server.add_reaction(world.imagine, int(interaction.original["id"]), world.bob, "2️⃣")
        await wait_until(lambda: journal_counts(data / "journal.sqlite3") == (3, 0),
                         what="round, round message and vote journaled, none committed")
        await _stopped_within(bot, 60)
    finally:
        if bot.poll() is None:
            os.killpg(bot.pid, signal.SIGKILL)
            bot.wait()
    assert bot.returncode == 0, log_path.read_text()[-3000:]
    assert journal_counts(data / "journal.sqlite3") == (3, 3)
    status = json.loads((data / "writer-status.json").read_text())
    assert status["state"] == "stopped" and status["pending"] == 0, status
    tables = committed_rows(data / "oxen")["tables"]
    assert [r["prompt"] for r in tables["rounds"]] == ["a quiet harbour"]
    assert [(v["user_id"], v["candidate"], v["action"]) for v in tables["votes"]] == [(world.bob, 2, "add")]


def test_the_stop_deadline_ends_a_stuck_process() -> None:
    """Past the deadline the process ends with status 1 even while a non-daemon thread is stuck."""
    code = ("import threading, time\nfrom bot.__main__ import _exit_after\n"
            "threading.Thread(target=time.sleep, args=(60,)).start()\n_exit_after(0.5)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and time.monotonic() - started < 40
