"""Benchmark: a burst of users typing /imagine at once, through the loopback Discord, on the tiny model (CPU).

    python -m bench.discord_queue [--users 200] [--steps 4] [--size 64] [--scenarios local,redis-2w]
                                  [--redis redis://127.0.0.1:6379/0] [--same-process] [--writer]

Each scenario starts a fresh `bot.devserver.DiscordDevServer` in this process (one guild, an #imagine
prompt channel, --users members) and the real bot against it, configured by `bot.offline.offline_config`:

    local        in-process queue (one GPU-worker thread), batch_size 1
    local b4     the same, batch_size 4
    redis 1w/2w  queue.redis_url, a fresh key prefix, 1 or 2 `python -m bot worker` processes, batching off
    redis 2w b4  2 workers with --batch-size 4

After a few warm-up prompts (first calls are slow), every user invokes `/imagine` with a distinct prompt and
seed, all in the same instant (`asyncio.gather`). Measured per user, from the moment the loopback server
created the interaction (the user pressing enter):

    ack      the bot's deferred callback reached the server: from here Discord shows "Refinery is
             thinking…" (and the 3-second interaction deadline is met). The target is p99 < 200 ms.
    status   the acknowledgement first shows the job's state ("⏳ queued — position N", or progress).
    answer   the acknowledgement holds the round's four images.
    votable  the bot has added its 1️⃣–4️⃣ reactions to it (its last request for that user).

Throughput is answers / seconds from the first invoke to the last answer. One watcher, woken by every
change on the loopback server, stamps the stages, so a stamp is late by at most one turn of its event loop.

The bot runs as `python -m bot run --config <written from offline_config>`, a process of its own, as
real Discord is not in the bot's process either. With --same-process it runs in this event loop instead
(`bot.offline.offline_bot`, as the tests and `refinery demo` do), where the loopback server's own work
(HTTP, gateway compression, this watcher) is counted in the bot's latencies. Every torch runs on one
thread ([model] cpu_threads = 1); Redis workers start, load and warm up before the burst (not measured).
Progress edits use the production interval (1.5 s), not the offline settings' 0.2 s. The Oxen writer
process runs but commits nothing during the bench unless --writer (it is not on the acknowledgement or
answer path, and on a small machine it only adds noise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bot.config import SECTIONS, Config, GenerationConfig, load_config
from bot.devserver import DiscordDevServer, Interaction
from bot.offline import offline_bot, offline_config
from pipeline.tiny import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ACK_TARGET_S = 0.2
IN_PROGRESS = ("⏳", "🖌️")  # the acknowledgement's status lines (bot/render.py status_text)
ERROR_MARK = "⚠️"  # how every error shown to a user starts (bot/errors.py user_message)


@dataclass(frozen=True)
class Scenario:
    name: str
    workers: int  # 0 = the in-process queue
    batch: int = 1

    @property
    def key(self) -> str:
        return self.name.replace(" ", "-")


SCENARIOS = (Scenario("local", 0), Scenario("local b4", 0, 4), Scenario("redis 1w", 1), Scenario("redis 2w", 2),
             Scenario("redis 2w b4", 2, 4))


@dataclass
class Timeline:
    """When one user's /imagine reached each stage (time.monotonic())."""

    created: float
    ack: float | None = None
    status: float | None = None
    answer: float | None = None
    votable: float | None = None
    error: str | None = None  # what the bot showed instead of a round


@dataclass
class Measured:
    scenario: Scenario
    timelines: list[Timeline]
    wall_s: float
    requests: int  # REST requests the bot made during the burst
    per_worker: str = ""  # jobs each worker ran, e.g. "104/96"
    bot_errors: list[str] = field(default_factory=list)  # ERROR lines the bot logged

    def seconds(self, stage: str) -> list[float]:
        return [getattr(t, stage) - t.created for t in self.timelines if getattr(t, stage) is not None]

    @property
    def answered(self) -> int:
        return len(self.seconds("answer"))

    @property
    def throughput(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else 0.0


class Stopwatch:
    """Stamps the stages of every interaction started after it was made; `update` runs on each server change."""

    def __init__(self, server: DiscordDevServer, expected: int) -> None:
        self._server = server
        self._skip = len(server.interactions)  # the warm-up's
        self._expected = expected
        self._open: dict[int, tuple[Interaction, Timeline]] = {}
        self.timelines: list[Timeline] = []

    def update(self) -> bool:
        """Stamp what happened since the last call; True once every expected interaction has ended."""
        now = time.monotonic()
        for interaction in self._server.interactions[self._skip + len(self.timelines):]:
            timeline = Timeline(created=interaction.created)
            self.timelines.append(timeline)
            self._open[interaction.id] = (interaction, timeline)
        for key, (interaction, timeline) in list(self._open.items()):
            if timeline.ack is None and interaction.acknowledged:
                timeline.ack = now
            original = interaction.original
            if original is None:
                continue
            content = original.get("content") or ""
            if timeline.status is None and any(mark in content for mark in IN_PROGRESS):
                timeline.status = now
            if timeline.answer is None and len(original.get("attachments") or []) == 4:
                timeline.answer = now
            if timeline.answer is not None:
                bot_votes = [emoji for emoji, users in self._server.reactions(int(original["id"])).items()
                             if self._server.bot_user_id in users]
                if len(bot_votes) >= 4:  # the bot has added 1️⃣–4️⃣: its work for this user is done
                    timeline.votable = now
                    del self._open[key]
            elif ERROR_MARK in content:
                timeline.error = content[:160]
                del self._open[key]
        return len(self.timelines) >= self._expected and not self._open


def _options(user: int, steps: int, size: int) -> dict[str, str | int]:
    return {"prompt": f"user {user}: a lighthouse on a cliff, variation {user}", "seed": 1000 + 4 * user,
            "steps": steps, "size": str(size)}


async def _warm_up(server: DiscordDevServer, channel: int, users: list[int], steps: int, size: int) -> Interaction:
    """A few prompts through the whole path; returns one, to watch the server through."""
    started = await asyncio.gather(*(server.invoke_slash("imagine", _options(i, steps, size), user_id=user,
                                                         channel_id=channel) for i, user in enumerate(users)))
    for interaction in started:
        await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=120)
    return started[0]


async def _burst(server: DiscordDevServer, channel: int, users: list[int], probe: Interaction, steps: int,
                 size: int, timeout: float) -> tuple[list[Timeline], float, int]:
    stopwatch = Stopwatch(server, len(users))
    requests_before = len(server.requests)
    # This process holds torch and diffusers (~500k objects): a full collection during the burst stalls
    # the loopback server for about 0.2 s, which would be charged to the bot. Freeze what exists now.
    gc.collect()
    gc.freeze()
    # One waiter for the whole burst: `probe.wait_for` re-checks after every change on the server.
    watcher = asyncio.create_task(probe.wait_for(lambda _: stopwatch.update(), timeout=timeout))
    await asyncio.gather(*(server.invoke_slash("imagine", _options(i, steps, size), user_id=user, channel_id=channel)
                           for i, user in enumerate(users)))
    try:
        await watcher
    except TimeoutError:
        print(f"  the burst timed out after {timeout:.0f} s", file=sys.stderr)
    finally:
        gc.unfreeze()
    first = min(t.created for t in stopwatch.timelines)
    last = max(t.answer or t.ack or t.created for t in stopwatch.timelines)
    return stopwatch.timelines, last - first, len(server.requests) - requests_before


# --- the bot ----------------------------------------------------------------------------------------

def _toml(config: Config) -> str:
    """`config` as the TOML that `load_config` reads back (strings and lists as JSON, which TOML accepts)."""
    lines = []
    for name in SECTIONS:
        lines.append(f"[{name}]")
        for key, value in dataclasses.asdict(getattr(config, name)).items():
            text = str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, int | float) \
                else json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def _bot_process(server: DiscordDevServer, config: Config, folder: Path) -> AsyncIterator[list[str]]:
    """`refinery run` as a real process; yields the ERROR lines of its log (filled in on exit)."""
    path = folder / "bot.toml"
    path.write_text(_toml(config), encoding="utf-8")
    if dataclasses.replace(load_config(path), base_dir=config.base_dir) != config:
        raise RuntimeError("bench: the written bot.toml does not read back as the config it was written from")
    log = folder / "bot.log"
    env = {**os.environ, "DISCORD_TOKEN": server.bot_token, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bot", "--log-level", "WARNING", "run", "--config", str(path)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(TimeoutError):
                await server.wait_until_identified(timeout=0.5)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"bench: the bot did not connect; its log:\n{tail}")
        yield errors
    finally:
        await asyncio.to_thread(_stop, [proc])  # in a thread: the loopback server must keep answering its goodbyes
        errors += [line for line in log.read_text(errors="replace").splitlines()
                   if line.split(" ")[2:3] in (["ERROR"], ["CRITICAL"])]


class _ErrorLines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.asynccontextmanager
async def _bot_in_loop(server: DiscordDevServer, config: Config, writer: bool) -> AsyncIterator[list[str]]:
    """The bot in this event loop, as the tests run it; yields the ERROR records it logs."""
    errors: list[str] = []
    handler = _ErrorLines(errors)
    logging.getLogger().addHandler(handler)
    try:
        async with offline_bot(server, config, start_writer=writer):
            yield errors
    finally:
        logging.getLogger().removeHandler(handler)


# --- Redis workers ----------------------------------------------------------------------------------

def _start_workers(url: str, model: Path, prefix: str, scenario: Scenario, folder: Path
                   ) -> list[subprocess.Popen[bytes]]:
    """As tests/cogs/test_scale_out.py's start_worker: the tiny checkpoint on one CPU thread."""
    config = folder / "worker.toml"
    config.write_text(f'[model]\nid = "{model}"\nlocal_files_only = true\ndevice = "cpu"\nscheduler = "ddim"\n'
                      "cpu_threads = 1\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    workers = []
    for i in range(scenario.workers):
        command = [sys.executable, "-m", "bot", "--log-level", "WARNING", "worker", "--redis", url, "--config",
                   str(config), "--prefix", prefix, "--batch-size", str(scenario.batch), "--name", f"{prefix}-w{i}"]
        with (folder / f"worker-{i}.log").open("wb") as log:
            workers.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return workers


async def _wait_registered(client: redis.Redis, prefix: str, workers: list[subprocess.Popen[bytes]],
                           folder: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while client.zcard(f"{prefix}:workers") < len(workers):
        dead = [i for i, proc in enumerate(workers) if proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            log = (folder / f"worker-{dead[0] if dead else 0}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bench: worker {dead or ''} did not start within {timeout:.0f} s; its log:\n{log}")
        await asyncio.sleep(0.2)


def _stop(procs: list[subprocess.Popen[bytes]], signum: int = signal.SIGTERM) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _delete(client: redis.Redis, prefix: str, pattern: str = "*") -> None:
    keys = list(client.scan_iter(match=f"{prefix}:{pattern}", count=1000))
    if keys:
        client.delete(*keys)


# --- one scenario -----------------------------------------------------------------------------------

def _overrides(scenario: Scenario, args: argparse.Namespace, prefix: str) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {
        "model": {"cpu_threads": 1},
        "generation": {"progress_interval_s": GenerationConfig().progress_interval_s,
                       "max_steps": max(20, args.steps), "max_size": max(256, args.size)},
        "queue": {"max_depth": max(100, 2 * args.users), "batch_size": scenario.batch},
    }
    if not args.writer:
        overrides["storage"] = {"commit_interval_s": 3600.0, "commit_batch": 1_000_000}
    if scenario.workers:
        overrides["queue"] |= {"redis_url": args.redis, "redis_prefix": prefix}
    return overrides


async def _scenario(scenario: Scenario, args: argparse.Namespace, model: Path, root: Path) -> Measured:
    folder = root / scenario.key
    folder.mkdir()
    prefix = f"refinery-bench-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(args.redis, decode_responses=True) if scenario.workers else None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        async with DiscordDevServer() as server:
            channel = server.add_channel("imagine")
            users = [server.add_user(f"user{i}") for i in range(args.users)]
            if client is not None:
                workers = _start_workers(args.redis, model, prefix, scenario, folder)
                await _wait_registered(client, prefix, workers, folder)
            config = offline_config(server, model, folder / "data", _overrides(scenario, args, prefix))
            bot = _bot_in_loop(server, config, args.writer) if args.same_process else \
                _bot_process(server, config, folder)
            async with bot as bot_errors:
                warm = max(2, scenario.batch * max(1, scenario.workers))
                probe = await _warm_up(server, channel, users[:warm], args.steps, args.size)
                if client is not None:
                    _delete(client, prefix, "job:*")  # so that per-worker counts are the burst's
                timelines, wall_s, requests = await _burst(server, channel, users, probe, args.steps, args.size,
                                                           args.timeout)
                per_worker = ""
                if client is not None:
                    ran = [client.hget(key, "worker") for key in client.scan_iter(match=f"{prefix}:job:*", count=1000)]
                    per_worker = "/".join(str(ran.count(f"{prefix}-w{i}")) for i in range(scenario.workers))
    finally:
        _stop(workers)
        if client is not None:
            _delete(client, prefix)
            client.close()
        shutil.rmtree(folder, ignore_errors=True)
    return Measured(scenario, timelines, wall_s, requests, per_worker, bot_errors)


def _pick(names: str, redis_up: bool) -> Iterator[Scenario]:
    wanted = {name.strip().replace(" ", "-") for name in names.split(",") if name.strip()}
    unknown = wanted - {s.key for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"bench: unknown scenario(s) {sorted(unknown)}; choose from {[s.key for s in SCENARIOS]}")
    for scenario in SCENARIOS:
        if scenario.key not in wanted:
            continue
        if scenario.workers and not redis_up:
            print(f"skipping {scenario.name}: no Redis answers at the --redis URL", file=sys.stderr)
            continue
        yield scenario


def _redis_up(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())
    except (redis.RedisError, ValueError):
        return False


async def _run(args: argparse.Namespace) -> list[Measured]:
    scenarios = list(_pick(args.scenarios, _redis_up(args.redis)))
    results = []
    with tempfile.TemporaryDirectory(prefix="refinery-bench-") as tmp:
        model = build_tiny_checkpoint(Path(tmp) / "sd")
        for scenario in scenarios:
            print(f"running {scenario.name}…", file=sys.stderr)
            results.append(await _scenario(scenario, args, model, Path(tmp)))
    return results


# --- the report -------------------------------------------------------------------------------------

def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _report(results: list[Measured], args: argparse.Namespace) -> None:
    where = "in the bench's event loop" if args.same_process else "as its own process (`refinery run`)"
    print(f"{args.users} users × 1 /imagine, all at once, through the loopback Discord; 4 candidates of "
          f"{args.size}×{args.size}, {args.steps} steps; tiny model, CPU, torch on 1 thread per process; "
          f"the bot {where}")
    print(f"{'scenario':<12} {'ack p50':>8} {'ack p99':>8} {'status p50':>10} {'status p99':>10} "
          f"{'answer p50':>10} {'answer p99':>10} {'votable p99':>11} {'jobs/s':>7} {'req/job':>7}  per worker")
    for m in results:
        ack, status, answer, votable = (m.seconds(stage) for stage in ("ack", "status", "answer", "votable"))
        print(f"{m.scenario.name:<12} {_pct(ack, 50) * 1e3:>6.0f}ms {_pct(ack, 99) * 1e3:>6.0f}ms "
              f"{_pct(status, 50) * 1e3:>8.0f}ms {_pct(status, 99) * 1e3:>8.0f}ms "
              f"{_pct(answer, 50):>9.2f}s {_pct(answer, 99):>9.2f}s {_pct(votable, 99):>10.2f}s {m.throughput:>7.2f} "
              f"{m.requests / max(1, len(m.timelines)):>7.1f}  {m.per_worker}")
    for m in results:
        shown = [t.error for t in m.timelines if t.error is not None]
        if m.answered < args.users or m.bot_errors:
            print(f"  {m.scenario.name}: {m.answered}/{args.users} answered, {len(shown)} shown an error"
                  + (f" (e.g. {shown[0]!r})" if shown else "") + f", {len(m.bot_errors)} ERROR lines logged"
                  + (f" (first: {m.bot_errors[0][:200]!r})" if m.bot_errors else ""))
    met = [m.scenario.name for m in results if _pct(m.seconds("ack"), 99) < ACK_TARGET_S]
    print(f"ack p99 < {ACK_TARGET_S * 1e3:.0f} ms: {len(met)} of {len(results)} scenarios"
          + (f" ({', '.join(met)})" if met and len(met) < len(results) else ""))
    by = {m.scenario.name: m for m in results}

    def ratio(a: str, b: str) -> str:
        if a not in by or b not in by or by[b].throughput == 0:
            return "n/a"
        return f"{by[a].throughput / by[b].throughput:.2f}×"

    print(f"throughput 2 workers / 1 worker: {ratio('redis 2w', 'redis 1w')} (batching off)")
    print(f"throughput batching on / off:    {ratio('local b4', 'local')} (local), "
          f"{ratio('redis 2w b4', 'redis 2w')} (redis, 2 workers)")
    print(f"throughput redis 1 worker / local: {ratio('redis 1w', 'local')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discord_queue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200, help="simulated users, one /imagine each (default 200)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per job (default 4)")
    parser.add_argument("--size", type=int, default=64, help="image width and height, a multiple of 8 (default 64)")
    parser.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS),
                        help=f"comma-separated subset of {', '.join(s.key for s in SCENARIOS)} (default: all)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the worker scenarios")
    parser.add_argument("--same-process", action="store_true",
                        help="run the bot in this event loop, beside the loopback server (as the tests do)")
    parser.add_argument("--writer", action="store_true", help="let the Oxen writer commit during the bench")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a burst may take (default 600)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.steps < 1 or args.size < 64 or args.size % 8:
        parser.error("--users and --steps must be ≥ 1, --size a multiple of 8 and ≥ 64")
    started = time.monotonic()
    results = asyncio.run(_run(args))
    _report(results, args)
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
