"""The Redis queue and workers against a real Redis at 127.0.0.1:6379: fairness, limits, cancel,
progress, batching, restarts, take-over, and two `refinery worker` processes with one killed mid-job."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import redis
from PIL import Image

from pipeline.diffusers_generator import DiffusersGenerator
from pipeline.generator import BaseGenerator
from pipeline.jobs import COMPILING_NOTE, JobQueue, JobState, QueueClosed, QueueLimitError
from pipeline.queue import LocalQueue
from pipeline.redis_queue import RedisQueue, estimate_eta
from pipeline.redis_worker import RedisWorker
from pipeline.requests import GenerationCancelled, GenerationRequest, GenerationResult, ProgressCallback
from tests.slow_generator import SlowGenerator

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class RecordingGenerator(BaseGenerator):
    """A Generator that records the prompts it ran and can hold a run at one step until released."""

    def __init__(self, model_id: str = "recording", steps: int = 3, hold_at: int | None = None) -> None:
        self.model_id = model_id
        self.steps = steps
        self.hold_at = hold_at
        self.ran: list[str] = []
        self.held = threading.Event()
        self.release = threading.Event()

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
        for step in range(1, self.steps + 1):
            if progress is not None:
                progress(step, self.steps)
            if step == self.hold_at:
                self.held.set()
                self.release.wait(10)
        self.ran.append(request.prompt)
        return GenerationResult(images=(b"png",) * request.count, seeds=request.seeds, model_id=self.model_id,
                                scheduler="none", elapsed_s=0.01)


def request(prompt: str, **changes: Any) -> GenerationRequest:
    base = GenerationRequest(prompt=prompt, seeds=(1, 2, 3, 4), steps=4, guidance=7.5, width=64, height=64)
    return replace(base, **changes)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def max_diff(one: GenerationResult, other: GenerationResult) -> int:
    return max(int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(one.images, other.images, strict=True))


async def until(check: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return value


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at 127.0.0.1:6379: {exc}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"refinery-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
async def queues(prefix: str) -> AsyncIterator[Callable[..., Awaitable[RedisQueue]]]:
    """Started RedisQueues on the test's prefix, each standing for one bot process."""
    made: list[RedisQueue] = []

    async def make(**settings: Any) -> RedisQueue:
        queue = RedisQueue(REDIS_URL, prefix=prefix, poll_s=0.05, **{"max_per_user": 10, **settings})
        await queue.start()
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()


@pytest.fixture
def worker(redis_client: redis.Redis, prefix: str) -> Callable[..., RedisWorker]:
    def make(generator: Any, **settings: Any) -> RedisWorker:
        made = RedisWorker(generator, redis_client, prefix=prefix, **settings)
        made.setup()
        return made

    return make


def drain(worker: RedisWorker) -> int:
    handled = 0
    while n := worker.run_once():
        handled += n
    return handled


async def test_both_queues_are_job_queues(prefix: str) -> None:
    """LocalQueue and RedisQueue both satisfy the JobQueue protocol the service uses."""
    local = LocalQueue(RecordingGenerator())
    assert isinstance(local, JobQueue)
    assert isinstance(RedisQueue(REDIS_URL, prefix=prefix), JobQueue)
    await local.close()


async def test_fair_across_processes(queues: Any, worker: Any, prefix: str) -> None:
    """User A submits 5 from another process, user B 1 from this one → B's job runs second."""
    script = f"""
        import asyncio
        from pipeline.redis_queue import RedisQueue
        from pipeline.requests import GenerationRequest

        async def main() -> None:
            queue = RedisQueue({REDIS_URL!r}, prefix={prefix!r}, max_per_user=10)
            for k in range(5):
                await queue.submit(GenerationRequest(f"a{{k}}", (1,), 2, 1.0, 64, 64), user_id=1)

        asyncio.run(main())
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, check=True, timeout=30)
    queue = await queues()
    b = await queue.submit(request("b0"), user_id=2)
    assert queue.status(b).position == 2
    generator = RecordingGenerator()
    assert await asyncio.to_thread(drain, worker(generator)) == 6
    assert generator.ran == ["a0", "b0", "a1", "a2", "a3", "a4"]
    assert (await asyncio.wait_for(b.future, 5)).model_id == "recording"


async def test_limits_count_every_process(queues: Any) -> None:
    """Per-user and depth limits count all bots' jobs; the cooldown refuses with the time left."""
    one, two = await queues(max_per_user=2, max_depth=3), await queues(max_per_user=2, max_depth=3)
    await one.submit(request("a"), user_id=1)
    await two.submit(request("a"), user_id=1)
    with pytest.raises(QueueLimitError, match="limit is 2"):
        await one.submit(request("a"), user_id=1)
    await two.submit(request("b"), user_id=2)
    with pytest.raises(QueueLimitError, match="queue is full"):
        await one.submit(request("c"), user_id=3)
    slow = await queues(cooldown_s=30)
    await slow.submit(request("d"), user_id=4)
    with pytest.raises(QueueLimitError, match="every 30 s") as refused:
        await slow.submit(request("d"), user_id=4)
    assert refused.value.retry_after_s is not None and 29 < refused.value.retry_after_s <= 30


async def test_cancel_waiting_job_from_another_process(queues: Any, worker: Any) -> None:
    """A waiting job cancelled by another bot is answered "cancelled", frees its slot and never runs."""
    queue, other = await queues(max_per_user=2), await queues()
    keep = await queue.submit(request("keep"), user_id=1)
    drop = await queue.submit(request("drop"), user_id=1)
    assert await other.cancel(drop.job_id)
    with pytest.raises(GenerationCancelled):
        await asyncio.wait_for(drop.future, 5)
    await queue.submit(request("again"), user_id=1)
    generator = RecordingGenerator()
    await asyncio.to_thread(drain, worker(generator))
    assert generator.ran == ["keep", "again"]
    assert not await queue.cancel(drop.job_id)
    await asyncio.wait_for(keep.future, 5)


async def test_progress_position_and_eta_reach_the_submitter(queues: Any, worker: Any) -> None:
    """While a job runs, its submitter sees its steps; the jobs behind it see positions and ETAs."""
    queue = await queues()
    generator = RecordingGenerator(steps=4, hold_at=2)
    generator.release.set()  # a first, quick job records a duration for the ETA
    serving = worker(generator)
    first = await queue.submit(request("first"), user_id=9)
    await asyncio.to_thread(serving.run_once)
    await asyncio.wait_for(first.future, 5)
    generator.release.clear()
    running = await queue.submit(request("running"), user_id=1)
    behind = [await queue.submit(request("b"), user_id=2), await queue.submit(request("a2"), user_id=1)]
    stop = threading.Event()
    thread = threading.Thread(target=serving.run, args=(stop,))
    thread.start()
    try:
        await until(lambda: queue.status(running).step == 2)
        status = queue.status(running)
        assert (status.state, status.position, status.total_steps) == (JobState.RUNNING, 0, 4)
        await until(lambda: queue.status(behind[0]).position == 1 and queue.status(behind[0]).eta_s is not None)
        b, a2 = (queue.status(job) for job in behind)
        assert (b.position, a2.position) == (1, 2) and a2.eta_s >= b.eta_s  # type: ignore[operator]
        assert [e.job_id for e in await queue.listing()] == [running.job_id, *(job.job_id for job in behind)]
        generator.release.set()
        await asyncio.wait_for(asyncio.gather(running.future, *(job.future for job in behind)), 10)
    finally:
        generator.release.set()
        stop.set()
        thread.join()


async def test_cancel_running_job_pipeline_stays_usable(queues: Any, worker: Any,
                                                        bare_generator: DiffusersGenerator) -> None:
    """A running tiny-model job stops at its next step; the same worker then runs the next job."""
    queue = await queues()
    stop = threading.Event()
    thread = threading.Thread(target=worker(SlowGenerator(bare_generator, 0.05)).run, args=(stop,))
    thread.start()
    try:
        job = await queue.submit(request("long", steps=40), user_id=1)
        await until(lambda: queue.status(job).step >= 2)
        assert await queue.cancel(job.job_id)
        with pytest.raises(GenerationCancelled):
            await asyncio.wait_for(job.future, 10)
        assert queue.status(job).state is JobState.CANCELLED and queue.status(job).step < 40
        after = await queue.submit(request("after"), user_id=1)
        result = await asyncio.wait_for(after.future, 20)
        assert max_diff(result, bare_generator.generate(request("after"))) == 0
    finally:
        stop.set()
        thread.join()


def test_generate_batch_equals_single_runs(bare_generator: DiffusersGenerator) -> None:
    """Compatible requests in one call give each request's images within 2/255 of it run alone."""
    requests = [request("a red fox", seeds=(1, 2)),
                request("a blue bird", negative_prompt="blurry", seeds=(3, 4, 5)),
                request("a cat", seeds=(6,))]
    batch = bare_generator.generate_batch(requests)
    alone = [bare_generator.generate(r) for r in requests]
    for one, other in zip(batch, alone, strict=True):
        assert one.seeds == other.seeds and one.extras["batch"] == "3"
        assert max_diff(one, other) <= 2
    assert max_diff(batch[0], bare_generator.generate(request("a red fox", seeds=(7, 8)))) > 2  # seeds matter
    with pytest.raises(ValueError, match="differ in steps"):
        bare_generator.generate_batch([requests[0], replace(requests[1], steps=5)])


async def test_worker_batches_compatible_waiting_jobs(queues: Any, worker: Any,
                                                      bare_generator: DiffusersGenerator) -> None:
    """Compatible waiting jobs share one call and each gets its own images; a different one waits."""
    queue = await queues()
    jobs = [await queue.submit(request("fox", seeds=(1, 2)), user_id=1),
            await queue.submit(request("bird", negative_prompt="blurry", seeds=(3,)), user_id=2),
            await queue.submit(request("odd", steps=3), user_id=3),
            await queue.submit(request("cat", seeds=(4, 5)), user_id=1)]
    serving = worker(bare_generator, batch_size=4)
    assert await asyncio.to_thread(serving.run_once) == 3
    assert await asyncio.to_thread(serving.run_once) == 1
    results = await asyncio.wait_for(asyncio.gather(*(job.future for job in jobs)), 10)
    assert [r.extras.get("batch") for r in results] == ["3", "3", None, "3"]
    for job, result in zip(jobs, results, strict=True):
        assert max_diff(result, bare_generator.generate(job.request)) <= 2


async def test_restarted_bot_resumes_its_jobs(queues: Any, worker: Any) -> None:
    """Jobs outlive the bot: pending_jobs() lists them with their meta, resume() gets their answers."""
    first = await queues()
    done = await first.submit(request("done"), user_id=1, meta={"channel": 5, "message": 6})
    waiting = await first.submit(request("waiting"), user_id=2, meta={"channel": 5, "message": 7})
    await first.close()
    for job in (done, waiting):
        with pytest.raises(QueueClosed) as closed:
            await job.future
        assert closed.value.kept, "a Redis job outlives the bot that submitted it"
    serving = worker(RecordingGenerator())
    assert await asyncio.to_thread(serving.run_once) == 1  # finishes while no bot is listening
    second = await queues()
    pending = {p.meta["message"]: p for p in await second.pending_jobs()}
    assert (pending[6].state, pending[7].state) == (JobState.DONE, JobState.QUEUED)
    assert (pending[7].request, pending[7].user_id) == (request("waiting"), 2)
    resumed = [await second.resume(pending[k].job_id) for k in (6, 7)]
    assert resumed[0].future.done() and resumed[0].future.result().images == (b"png",) * 4
    await asyncio.to_thread(drain, serving)
    await asyncio.wait_for(resumed[1].future, 5)
    assert len(await second.pending_jobs()) == 2, "done jobs stay open until their rounds are journaled"
    for job in resumed:
        await second.forget(job.job_id)
    assert await second.pending_jobs() == []


async def test_silent_worker_is_taken_over_and_its_late_answer_dropped(
        queues: Any, worker: Any, redis_client: redis.Redis, prefix: str) -> None:
    """A worker silent past claim-after loses its job to another; its late result is dropped."""
    queue = await queues()
    job = await queue.submit(request("j"), user_id=1)
    stalled = RecordingGenerator("stalled", hold_at=1)
    slow = asyncio.create_task(asyncio.to_thread(worker(stalled, name="slow", claim_after_s=0.3).run_once))
    await until(stalled.held.is_set)
    rescuer = worker(RecordingGenerator("rescuer"), name="rescuer", claim_after_s=0.3)
    await asyncio.sleep(0.4)
    assert await asyncio.to_thread(rescuer.run_once) == 1
    assert (await asyncio.wait_for(job.future, 5)).model_id == "rescuer"
    stalled.release.set()
    await slow  # the slow worker finishes too, and its answer is dropped
    fields = redis_client.hgetall(f"{prefix}:job:{job.job_id}")
    assert (fields["writes"], fields["attempts"], fields["worker"]) == ("1", "2", "rescuer")
    assert '"rescuer"' in redis_client.get(f"{prefix}:result:{job.job_id}")  # type: ignore[operator]
    assert redis_client.xpending(f"{prefix}:jobs", "workers")["pending"] == 0


def test_eta_shares_the_line_among_workers() -> None:
    """One worker: LocalQueue's estimate; two workers take the jobs ahead in parallel."""
    assert estimate_eta(3, 10.0, 1, [4.0]) == 6.0 + 2 * 10.0
    assert estimate_eta(3, 10.0, 2, [4.0]) == 10.0
    assert estimate_eta(1, None, 2, []) is None


@pytest.mark.slow
async def test_two_worker_processes_one_killed_mid_job(queues: Any, redis_client: redis.Redis, prefix: str,
                                                       tiny_models: Any, tmp_path: Path) -> None:
    """Two `refinery worker` processes, one SIGKILLed mid-job: every job is answered exactly once,
    the killed worker's job by the other after claim-after."""
    config = tmp_path / "worker.toml"
    config.write_text(f'[model]\nid = "{tiny_models.sd}"\nlocal_files_only = true\ndevice = "cpu"\n'
                      'scheduler = "ddim"\ncpu_threads = 1\n')
    logs = {name: tmp_path / f"{name}.log" for name in ("w1", "w2")}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "tests.slow_generator", "--delay", "0.1", "--redis", REDIS_URL, "--config",
         str(config), "--prefix", prefix, "--claim-after", "2", "--name", name],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=path.open("w"), stderr=subprocess.STDOUT)
        for name, path in logs.items()}
    try:
        await until(lambda: redis_client.zcard(f"{prefix}:workers") == 2, timeout=45)
        queue = await queues()
        jobs = [await queue.submit(request(f"p{k}", steps=6, seeds=(k,)), user_id=k % 3) for k in range(6)]

        def running_on_w1() -> str | None:
            for job in jobs:
                state, worker, step = redis_client.hmget(f"{prefix}:job:{job.job_id}", "state", "worker", "step")
                if (state, worker) == ("running", "w1") and int(step or 0) >= 1:
                    return job.job_id
            return None

        victim = await until(running_on_w1, timeout=20)
        procs["w1"].kill()
        procs["w1"].wait()
        results = await asyncio.wait_for(asyncio.gather(*(job.future for job in jobs)), 40)
        assert [len(result.images) for result in results] == [1] * 6
        for job in jobs:
            fields = redis_client.hgetall(f"{prefix}:job:{job.job_id}")
            assert (fields["state"], fields["writes"]) == ("done", "1"), job.job_id
        victim_fields = redis_client.hgetall(f"{prefix}:job:{victim}")
        assert (victim_fields["attempts"], victim_fields["worker"]) == ("2", "w2")
        assert len(list(redis_client.scan_iter(match=f"{prefix}:result:*"))) == 6
        assert redis_client.xpending(f"{prefix}:jobs", "workers")["pending"] == 0
        assert f"took over {victim}" in logs["w2"].read_text()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)


async def test_listing_shows_every_bots_jobs_in_fair_order(queues: Any, worker: Any) -> None:
    """/queue's listing comes from Redis: a second bot process sees the first one's jobs, with prompts,
    owners and round-robin positions, and the running job first."""
    first, second = await queues(), await queues()
    for k in range(3):
        await first.submit(request(f"alice {k}"), user_id=1)
    await second.submit(request("bob 0"), user_id=2)
    listed = await second.listing()
    assert [(e.user_id, e.prompt, e.status.position) for e in listed] == [
        (1, "alice 0", 1), (2, "bob 0", 2), (1, "alice 1", 3), (1, "alice 2", 4)]
    assert all(e.status.state is JobState.QUEUED and e.waited_s >= 0 for e in listed)

    generator = RecordingGenerator(hold_at=1)
    running = asyncio.create_task(asyncio.to_thread(worker(generator, batch_size=1).run_once))
    await until(generator.held.is_set)
    listed = await first.listing()
    assert [(e.prompt, e.status.state, e.status.position) for e in listed][:2] == [
        ("alice 0", JobState.RUNNING, 0), ("bob 0", JobState.QUEUED, 1)]
    generator.release.set()
    await running


async def test_a_worker_that_compiles_first_tells_the_submitter(queues: Any, worker: Any) -> None:
    """A worker whose generator compiles before this job's run says so; the bot's status shows the note."""

    class Compiling(RecordingGenerator):
        def first_run_compiles(self, requests: list[GenerationRequest]) -> bool:
            return True

    queue = await queues()
    generator = Compiling(hold_at=1)
    job = await queue.submit(request("new size"), user_id=1)
    running = asyncio.create_task(asyncio.to_thread(worker(generator).run_once))
    await until(generator.held.is_set)
    await until(lambda: queue.status(job).note == COMPILING_NOTE)
    generator.release.set()
    await running
    await asyncio.wait_for(job.future, 5)
