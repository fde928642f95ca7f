"""Benchmark: the job queue under a burst of simulated users, on the tiny model (CPU).

    python -m bench.queue [--users 8] [--jobs 3] [--steps 6] [--rounds 2] [--redis redis://127.0.0.1:6379/0]

Every user submits --jobs prompts at once (distinct prompts and seeds, same size and steps: the
common case, and the one batching helps). Scenarios, each on its own key prefix:

    local        LocalQueue: one in-process worker thread
    redis 1w/2w  RedisQueue + one or two `refinery worker` processes, batching off
    ... b4       the same with --batch-size 4

Reported: submit→acknowledgement latency (the submit() call; once it returns the bot can answer
"queued, position k"), submit→answer latency, and throughput (jobs from first submit to last answer).
All worker processes start together first (their start-up is not measured); each runs torch on one
thread, so on a 2-core machine two workers can at best double throughput. Workers run a warm-up job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings
from pipeline.jobs import Job
from pipeline.queue import LocalQueue
from pipeline.redis_queue import RedisQueue
from pipeline.requests import GenerationRequest
from pipeline.tiny import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scenario:
    name: str
    workers: int  # 0 = LocalQueue
    batch: int = 1


@dataclass(frozen=True)
class Measured:
    scenario: Scenario
    submit_s: list[float]
    answer_s: list[float]
    wall_s: float
    per_worker: str = ""  # jobs each worker ran, e.g. "13/11"

    @property
    def throughput(self) -> float:
        return len(self.answer_s) / self.wall_s


def _request(user: int, k: int, steps: int) -> GenerationRequest:
    return GenerationRequest(prompt=f"user {user} prompt {k}", seeds=tuple(range(4 * k, 4 * k + 4)), steps=steps,
                             guidance=7.5, width=64, height=64)


async def _burst(queue: LocalQueue | RedisQueue, users: int, jobs: int, steps: int) -> Measured:
    loop = asyncio.get_running_loop()
    submit_s: list[float] = []
    answer_s: list[float] = []

    async def answered(job: Job, since: float) -> None:
        await job.future
        answer_s.append(loop.time() - since)

    waits = []
    first = loop.time()
    for k in range(jobs):  # users interleave, as real prompts arriving together would
        for user in range(users):
            started = loop.time()
            job = await queue.submit(_request(user, k, steps), user_id=user)
            submit_s.append(loop.time() - started)
            waits.append(asyncio.ensure_future(answered(job, started)))
            await asyncio.sleep(0)  # let the loop breathe between submits, as separate events would
    await asyncio.gather(*waits)
    return Measured(Scenario("", 0), submit_s, answer_s, loop.time() - first)


def _start_workers(url: str, config: Path, prefix: str, count: int, batch: int) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "bot", "--log-level", "WARNING", "worker", "--redis", url, "--config",
               str(config), "--prefix", prefix, "--batch-size", str(batch)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return [subprocess.Popen([*command, "--name", f"{prefix}-w{i}"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(count)]


async def _wait_registered(client: redis.Redis, prefixes: dict[str, int], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while any(client.zcard(f"{p}:workers") < n for p, n in prefixes.items()):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the workers did not start within 90 s (run one by hand to see why)")
        await asyncio.sleep(0.2)


async def _run(args: argparse.Namespace) -> list[Measured]:
    folder = Path(tempfile.mkdtemp(prefix="refinery-bench-"))
    model = build_tiny_checkpoint(folder / "sd")
    config = folder / "worker.toml"
    config.write_text(f'[model]\nid = "{model}"\nlocal_files_only = true\ndevice = "cpu"\nscheduler = "ddim"\n'
                      "cpu_threads = 1\n")
    scenarios = [Scenario("local", 0), Scenario("redis 1w", 1), Scenario("redis 2w", 2),
                 Scenario("redis 1w b4", 1, 4), Scenario("redis 2w b4", 2, 4)]
    run_id = uuid.uuid4().hex[:6]
    prefixes = {s: f"refinery-bench-{run_id}-{i}" for i, s in enumerate(scenarios) if s.workers}
    client = redis.Redis.from_url(args.redis, decode_responses=True)
    client.ping()
    procs = [proc for s, p in prefixes.items() for proc in _start_workers(args.redis, config, p, s.workers, s.batch)]
    results = []
    try:
        # Wait for every worker first, so their start-up does not steal CPU from the local run.
        print(f"waiting for {len(procs)} worker processes to load the model…", file=sys.stderr)
        await _wait_registered(client, {p: s.workers for s, p in prefixes.items()})
        generator = DiffusersGenerator(GeneratorSettings(model=str(model), scheduler="ddim", device="cpu",
                                                         local_files_only=True, cpu_threads=1)).load()
        local = LocalQueue(generator, max_per_user=args.jobs)
        await local.start()
        await _burst(local, 2, 1, args.steps)  # warm-up
        measured = min([await _burst(local, args.users, args.jobs, args.steps) for _ in range(args.rounds)],
                       key=lambda m: m.wall_s)
        results.append(Measured(scenarios[0], measured.submit_s, measured.answer_s, measured.wall_s))
        await local.close()
        for scenario, prefix in prefixes.items():
            queue = RedisQueue(args.redis, prefix=prefix, max_per_user=args.jobs, poll_s=0.2)
            await queue.start()
            await _burst(queue, scenario.workers, 1, args.steps)  # warm-up: about one job per worker
            rounds = []
            for _ in range(args.rounds):
                _delete(client, prefix, "job:*")  # so that per-worker counts are this round's
                measured = await _burst(queue, args.users, args.jobs, args.steps)
                ran = [client.hget(key, "worker") for key in client.scan_iter(match=f"{prefix}:job:*", count=1000)]
                counts = "/".join(str(ran.count(f"{prefix}-w{i}")) for i in range(scenario.workers))
                rounds.append(Measured(scenario, measured.submit_s, measured.answer_s, measured.wall_s, counts))
            results.append(min(rounds, key=lambda m: m.wall_s))
            await queue.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        for prefix in prefixes.values():
            _delete(client, prefix, "*")
    return results


def _delete(client: redis.Redis, prefix: str, pattern: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:{pattern}", count=1000))
    if keys:
        client.delete(*keys)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=3, help="prompts per user, all submitted at once")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="bursts per scenario; the fastest is shown "
                        "(the CPU is shared: the best round is the least disturbed one)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = asyncio.run(_run(args))
    jobs = args.users * args.jobs
    print(f"{jobs} jobs ({args.users} users × {args.jobs}), 4 candidates of 64×64, {args.steps} steps, tiny model, CPU")
    print(f"fastest of {args.rounds} rounds per scenario")
    print(f"{'scenario':<13} {'submit p50':>11} {'submit p99':>11} {'answer p50':>11} {'answer p99':>11} "
          f"{'jobs/s':>7}  per worker")
    for m in results:
        print(f"{m.scenario.name:<13} {_pct(m.submit_s, 50) * 1e3:>9.3f}ms {_pct(m.submit_s, 99) * 1e3:>9.3f}ms "
              f"{_pct(m.answer_s, 50):>10.2f}s {_pct(m.answer_s, 99):>10.2f}s {m.throughput:>7.2f}  {m.per_worker}")
    by = {m.scenario.name: m for m in results}
    ratio = lambda a, b: by[a].throughput / by[b].throughput  # noqa: E731
    print(f"throughput 2 workers / 1 worker: {ratio('redis 2w', 'redis 1w'):.2f}× (batching off), "
          f"{ratio('redis 2w b4', 'redis 1w b4'):.2f}× (batching on)")
    print(f"throughput batching on / off:    {ratio('redis 1w b4', 'redis 1w'):.2f}× (1 worker), "
          f"{ratio('redis 2w b4', 'redis 2w'):.2f}× (2 workers)")
    print(f"throughput redis 1 worker / local: {ratio('redis 1w', 'local'):.2f}×; submit p50 redis / local: "
          f"{_pct(by['redis 1w'].submit_s, 50) / _pct(by['local'].submit_s, 50):.0f}×")
    print(f"(bench took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
