"""The in-process queue: round-robin fairness, limits, cancel, progress, off-loop execution."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot import render
from pipeline.generator import BaseGenerator
from pipeline.job_store import JobStore
from pipeline.jobs import COMPILING_NOTE, JobState, QueueClosed, QueueLimitError
from pipeline.queue import MAX_ATTEMPTS, LocalQueue
from pipeline.requests import GenerationCancelled, GenerationRequest, GenerationResult, ProgressCallback


class RecordingGenerator(BaseGenerator):
    """A Generator that records the order of prompts and can be held mid-run by the test."""

    model_id = "recording"

    def __init__(self, steps: int = 3) -> None:
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.steps = steps
        self.threads: set[str] = set()

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None
                 ) -> GenerationResult:
        self.threads.add(threading.current_thread().name)
        for step in range(1, self.steps + 1):
            if not self.gate.wait(timeout=5):
                raise TimeoutError("test gate never opened")
            if progress is not None:
                progress(step, self.steps)
        self.ran.append(request.prompt)
        return GenerationResult(images=(b"png",) * request.count, seeds=request.seeds,
                                model_id=self.model_id, scheduler="none", elapsed_s=0.01)


def request(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, seeds=(1, 2, 3, 4), steps=3, guidance=1.0, width=64, height=64)


async def test_round_robin_user_b_runs_second() -> None:
    """User A submits 5, user B submits 1 → B's job runs second."""
    generator = RecordingGenerator()
    generator.gate.clear()  # hold the first job so the whole queue builds up behind it
    queue = LocalQueue(generator, max_per_user=10)
    await queue.start()
    jobs = [await queue.submit(request(f"a{k}"), user_id=1) for k in range(5)]
    jobs.append(await queue.submit(request("b0"), user_id=2))
    generator.gate.set()
    await asyncio.gather(*(job.future for job in jobs))
    await queue.close()
    assert generator.ran == ["a0", "b0", "a1", "a2", "a3", "a4"]


async def test_positions_interleave_users() -> None:
    """Positions reflect round-robin order while jobs wait."""
    generator = RecordingGenerator()
    queue = LocalQueue(generator, max_per_user=10)  # not started: everything waits
    a = [await queue.submit(request(f"a{k}"), user_id=1) for k in range(3)]
    b = await queue.submit(request("b"), user_id=2)
    assert [queue.position(job) for job in [*a, b]] == [1, 3, 4, 2]
    await queue.close()


async def test_limits_per_user_depth_and_cooldown() -> None:
    """Each limit refuses with a message naming it."""
    now = [100.0]
    queue = LocalQueue(RecordingGenerator(), max_depth=3, max_per_user=2, cooldown_s=5, clock=lambda: now[0])
    await queue.submit(request("a"), user_id=1)
    with pytest.raises(QueueLimitError, match="every 5 s"):
        await queue.submit(request("a"), user_id=1)
    now[0] += 6
    await queue.submit(request("a"), user_id=1)
    now[0] += 6
    with pytest.raises(QueueLimitError, match="limit is 2"):
        await queue.submit(request("a"), user_id=1)
    await queue.submit(request("b"), user_id=2)
    with pytest.raises(QueueLimitError, match="queue is full"):
        await queue.submit(request("c"), user_id=3)
    await queue.close()


async def test_cancel_waiting_and_running_jobs() -> None:
    """A waiting job is removed; a running one stops at its next step and the worker goes on."""
    generator = RecordingGenerator(steps=50)
    generator.gate.clear()
    queue = LocalQueue(generator, max_per_user=10)
    await queue.start()
    running = await queue.submit(request("running"), user_id=1)
    waiting = await queue.submit(request("waiting"), user_id=1)
    await asyncio.sleep(0.05)
    assert running.state is JobState.RUNNING
    assert await queue.cancel(waiting.job_id)
    assert await queue.cancel(running.job_id)
    generator.gate.set()
    for job in (running, waiting):
        with pytest.raises(GenerationCancelled):
            await job.future
        assert job.state is JobState.CANCELLED
    after = await queue.submit(request("after"), user_id=1)
    await after.future
    assert generator.ran == ["after"]
    assert not await queue.cancel(after.job_id)
    await queue.close()


async def test_progress_reaches_the_loop_and_work_runs_off_it() -> None:
    """Step progress is visible on the job; generation runs on the worker thread."""
    generator = RecordingGenerator(steps=4)
    queue = LocalQueue(generator)
    await queue.start()
    job = await queue.submit(request("p"), user_id=1)
    await job.future
    await asyncio.sleep(0)  # let the last progress callback land
    assert (job.step, job.total_steps) == (4, 4)
    assert job.state is JobState.DONE
    assert generator.threads and all(name.startswith("refinery-gpu") for name in generator.threads)
    assert queue.eta_s(2) is not None
    await queue.close()


async def test_job_store_keeps_accepted_jobs_until_they_end(tmp_path) -> None:
    """With a JobStore, jobs accepted but not ended are back after a restart (with their meta, in
    submission order); finished and cancelled jobs are gone from it."""
    generator = RecordingGenerator()
    queue = LocalQueue(generator, max_per_user=10, store=JobStore(tmp_path / "jobs.sqlite3"))
    await queue.start()
    done = await queue.submit(request("done"), user_id=1, meta={"ack": 1})
    await done.future
    await queue.forget(done.job_id)  # what the service does once the round is journaled
    generator.gate.clear()
    running = await queue.submit(request("running"), user_id=1, meta={"ack": 2})
    waiting = await queue.submit(request("waiting"), user_id=2, meta={"ack": 3})
    cancelled = await queue.submit(request("cancelled"), user_id=2, meta={"ack": 4})
    assert await queue.cancel(cancelled.job_id)
    while running.state is not JobState.RUNNING:
        await asyncio.sleep(0.01)
    closing = asyncio.create_task(queue.close())  # a crash leaves the same rows: written before submit returns
    await asyncio.sleep(0.05)
    generator.gate.set()  # the running job stops at its next step: close() flagged it
    await closing

    again = LocalQueue(generator, max_per_user=10, store=JobStore(tmp_path / "jobs.sqlite3"))
    pending = await again.pending_jobs()
    assert [(p.job_id, p.request.prompt, p.meta) for p in pending] == [
        (running.job_id, "running", {"ack": 2}), (waiting.job_id, "waiting", {"ack": 3})]
    await again.start()
    resumed = [await again.resume(p.job_id) for p in pending]
    results = await asyncio.gather(*(job.future for job in resumed))
    assert [r.seeds for r in results] == [(1, 2, 3, 4)] * 2 and generator.ran[-2:] == ["running", "waiting"]
    assert again.store is not None and len(again.store.pending()) == 2, "kept until the answer is durable"
    for job in resumed:
        await again.forget(job.job_id)
    assert await again.pending_jobs() == [] and again.store.pending() == []
    await again.close()


async def test_a_run_that_compiles_first_says_so() -> None:
    """When the generator will compile for a job's shape first, the running job's status carries a
    note saying so (and the acknowledgement shows it); a shape already compiled carries none."""

    class Compiling(RecordingGenerator):
        def __init__(self) -> None:
            super().__init__()
            self.compiled: set[int] = set()

        def first_run_compiles(self, requests: list[GenerationRequest]) -> bool:
            return requests[0].width not in self.compiled

        def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
            result = super().generate(request, progress)
            self.compiled.add(request.width)
            return result

    generator = Compiling()
    generator.gate.clear()
    queue = LocalQueue(generator)
    await queue.start()
    first = await queue.submit(request("new size"), user_id=1)
    while first.state is not JobState.RUNNING:
        await asyncio.sleep(0.01)
    status = queue.status(first)
    assert status.note == COMPILING_NOTE and COMPILING_NOTE in render.status_text(status, "new size")
    generator.gate.set()
    await first.future
    generator.gate.clear()
    again = await queue.submit(request("same size"), user_id=1)
    while again.state is not JobState.RUNNING:
        await asyncio.sleep(0.01)
    assert queue.status(again).note == ""
    generator.gate.set()
    await again.future
    await queue.close()


async def test_a_closed_queue_takes_nothing_new() -> None:
    """After close() (shutting down), submit refuses with QueueClosed rather than queueing a job that
    no worker would ever run."""
    queue = LocalQueue(RecordingGenerator())
    await queue.start()
    await queue.close()
    with pytest.raises(QueueClosed) as closed:
        await queue.submit(request("late"), user_id=1)
    assert not closed.value.kept


async def test_a_kept_job_that_keeps_ending_with_the_process_is_given_up(tmp_path) -> None:
    """Each run of a kept job is counted; one that was running when the process ended MAX_ATTEMPTS
    times (a crash it causes, say) fails on resume instead of crashing the bot forever."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.add("job-a", 1, request("poison"), {"ack": 1}, 0.0)
    store.add("job-b", 2, request("fine"), {"ack": 2}, 0.0)
    for _ in range(MAX_ATTEMPTS):
        store.count_runs(["job-a"])
    store.count_runs(["job-b"])
    queue = LocalQueue(RecordingGenerator(), store=store)
    await queue.start()
    poison, fine = [await queue.resume(p.job_id) for p in await queue.pending_jobs()]
    with pytest.raises(RuntimeError, match="tried 3 times"):
        await poison.future
    assert (await fine.future).seeds == (1, 2, 3, 4)
    assert [job.job_id for job in store.pending()] == ["job-b"]  # kept until its round is posted
    assert store.pending()[0].attempts == 2
    await queue.close()
    store.close()
