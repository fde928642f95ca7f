"""`LocalQueue`: the in-process `JobQueue` (the protocol and the job types are in pipeline.jobs).

Jobs wait in one queue per user and are taken round-robin, so one busy user cannot starve others.
Generation runs in a single worker thread (GPU work is serialised: pipelines made with `from_pipe`
share one scheduler), which keeps the asyncio event loop free while the GPU works.

`pipeline.redis_queue.RedisQueue` is the other `JobQueue`: the same fairness and limits kept in Redis,
with the GPU work done by `refinery worker` processes (`pipeline.redis_worker`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline.generator import Generator
from pipeline.job_store import JobStore
from pipeline.jobs import (
    COMPILING_NOTE,
    Job,
    JobListing,
    JobState,
    JobStatus,
    Limit,
    PendingJob,
    QueueClosed,
    limit_error,
)
from pipeline.requests import GenerationCancelled, GenerationRequest, GenerationResult, ProgressCallback, batch_key

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_ATTEMPTS = 3  # runs of a kept job that ended with the process before it is given up


class LocalQueue:
    """Fair queue with per-user and global limits, feeding one worker thread.

    With a `JobStore`, every accepted job is on disk until it ends, so a bot restarted after a crash
    (or a shutdown) gets them back from `pending_jobs()` and `resume()`s them."""

    def __init__(self, generator: Generator, *, max_depth: int = 100, max_per_user: int = 3,
                 cooldown_s: float = 0.0, batch_size: int = 1, store: JobStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.generator = generator
        self.batch_size = batch_size
        self.max_depth = max_depth
        self.max_per_user = max_per_user
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._waiting: collections.OrderedDict[int, collections.deque[Job]] = collections.OrderedDict()
        self._positions: dict[str, int] | None = None  # job id → place in line; None after any change
        self._jobs: dict[str, Job] = {}
        self._running: list[Job] = []  # one job, or a batch of compatible ones
        self._last_submit: dict[int, float] = {}
        self._recent_s: collections.deque[float] = collections.deque(maxlen=20)
        self.store = store
        # What an earlier run left in the store, until resumed (job ids are unique across runs).
        self._earlier = {job.job_id: job for job in store.pending()} if store is not None else {}
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refinery-gpu")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name="refinery-queue-worker")
        self._task.add_done_callback(_log_crash)

    async def close(self) -> None:
        """Stop taking jobs; the open ones end with QueueClosed (kept in the store, if there is one,
        which its owner closes after this: answers still being posted may forget their jobs)."""
        if self._closed:
            return
        self._closed = True
        for job in self._running:
            job._cancel.set()  # stop the GPU at its next step instead of finishing work nobody collects
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        kept = self.store is not None
        for job in list(self._jobs.values()):
            self._finish(job, JobState.CANCELLED, error=QueueClosed(kept=kept), forget=not kept)
        # Waits for the step in progress to end, off the loop: the bot is still telling users goodbye.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run blocking work (e.g. loading the model) on the GPU worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def submit(self, request: GenerationRequest, *, user_id: int, meta: dict[str, Any] | None = None) -> Job:
        if self._closed:
            raise QueueClosed(kept=False)  # shutting down: nothing new is accepted
        now = self._clock()
        limits = {"max_per_user": self.max_per_user, "cooldown_s": self.cooldown_s}
        mine = sum(1 for job in self._jobs.values() if job.user_id == user_id)
        if mine >= self.max_per_user:
            raise limit_error(Limit.PER_USER, mine, retry_after_s=self.eta_s(mine), **limits)
        waiting = sum(len(jobs) for jobs in self._waiting.values())
        if waiting >= self.max_depth:
            raise limit_error(Limit.DEPTH, waiting, retry_after_s=self.eta_s(1), **limits)
        since = now - self._last_submit.get(user_id, -1e18)
        if since < self.cooldown_s:
            raise limit_error(Limit.COOLDOWN, self.cooldown_s - since, retry_after_s=None, **limits)
        job = Job(job_id=f"job-{uuid.uuid4().hex[:16]}", user_id=user_id, request=request, submitted_at=now,
                  future=asyncio.get_running_loop().create_future(), meta=dict(meta or {}))
        self._last_submit[user_id] = now
        if self.store is not None:
            # Durable before "queued" is shown, and off the event loop (an fsync). Counted in _jobs
            # meanwhile, so a second submit of the same user sees it against the per-user limit.
            self._jobs[job.job_id] = job
            try:
                await asyncio.to_thread(self.store.add, job.job_id, user_id, request, job.meta, time.time())
            except BaseException:
                del self._jobs[job.job_id]
                raise
            if self._closed:  # closed while writing: it is on disk, so a restarted bot runs and answers it
                job.future.set_exception(QueueClosed(kept=True))
                return job
        self._enqueue(job)
        log.info("queued %s for user %s (position %d)", job.job_id, user_id, self.position(job))
        return job

    def _enqueue(self, job: Job) -> None:
        self._jobs[job.job_id] = job
        self._waiting.setdefault(job.user_id, collections.deque()).append(job)
        self._positions = None
        self._wakeup.set()

    async def cancel(self, job_id: str) -> bool:
        """Remove a waiting job, or interrupt a running one at its next step. False if already over."""
        job = self._jobs.get(job_id)
        if job is None or job.finished:
            return False
        job._cancel.set()
        if job.state is JobState.QUEUED:
            self._waiting[job.user_id].remove(job)
            self._positions = None
            self._finish(job, JobState.CANCELLED, error=GenerationCancelled("cancelled while waiting"))
        return True

    def order(self) -> list[Job]:
        """Waiting jobs in the order they will run: round-robin over users, each user's in FIFO order."""
        queues = [list(jobs) for jobs in self._waiting.values()]
        return [job for batch in itertools.zip_longest(*queues) for job in batch if job is not None]

    def position(self, job: Job) -> int:
        """1 = next to run, 0 = not waiting. Every waiting job's status is read each progress interval,
        so the order is computed once per change of the line, not once per job."""
        if self._positions is None:
            self._positions = {waiting.job_id: k for k, waiting in enumerate(self.order(), 1)}
        return self._positions.get(job.job_id, 0)

    def status(self, job: Job) -> JobStatus:
        position = self.position(job)
        eta = self.eta_s(position) if job.state is JobState.QUEUED else None
        return JobStatus(job.state, position, eta, job.step, job.total_steps, job.job_id, job.note)

    def eta_s(self, position: int) -> float | None:
        """Seconds until a job at `position` starts, from recently measured job durations."""
        if not self._recent_s:
            return None
        per_job = sum(self._recent_s) / len(self._recent_s)
        running_left = 0.0
        started = self._running[0].started_at if self._running else None
        if started is not None:
            running_left = max(0.0, per_job - (self._clock() - started))
        return running_left + per_job * max(0, position - 1)

    def jobs(self) -> list[Job]:
        running = list(self._running)
        return running + self.order()

    async def listing(self) -> list[JobListing]:
        now = self._clock()
        return [JobListing(job.job_id, job.user_id, job.request.prompt, self.status(job), now - job.submitted_at,
                           job.meta) for job in self.jobs()]

    async def forget(self, job_id: str) -> None:
        if self.store is not None:
            await asyncio.to_thread(self.store.remove, job_id)  # an fsync: off the loop

    async def pending_jobs(self) -> list[PendingJob]:
        """Jobs an earlier run accepted and never ended (empty without a store)."""
        return [PendingJob(job.job_id, job.user_id, job.request, job.meta, JobState.QUEUED, job.submitted_at)
                for job in self._earlier.values()]

    async def resume(self, job_id: str) -> Job:
        """Queue an earlier run's job again, ahead of nothing: it takes its turn like a new one (limits
        are not applied; it was accepted already)."""
        earlier = self._earlier.pop(job_id)
        age = max(0.0, time.time() - earlier.submitted_at)
        job = Job(job_id=job_id, user_id=earlier.user_id, request=earlier.request, submitted_at=self._clock() - age,
                  future=asyncio.get_running_loop().create_future(), meta=earlier.meta)
        if earlier.attempts >= MAX_ATTEMPTS:  # it was running each time the process died: do not loop
            log.error("%s was running when the bot stopped %d times; giving up on it", job_id, earlier.attempts)
            self._finish(job, JobState.FAILED, error=RuntimeError(f"{job_id} was tried {earlier.attempts} times"))
            return job
        self._enqueue(job)
        log.info("resumed %s for user %s (position %d)", job_id, job.user_id, self.position(job))
        return job

    def _next(self) -> Job | None:
        self._positions = None
        for user_id, jobs in list(self._waiting.items()):
            if not jobs:
                del self._waiting[user_id]
                continue
            job = jobs.popleft()
            # Round-robin: the user goes to the back of the line, behind everyone else.
            self._waiting.move_to_end(user_id)
            if not jobs:
                del self._waiting[user_id]
            return job
        return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = self._next()
            if job is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [job, *self._compatible_with(job)]
            self._running = batch
            compiles = self.generator.first_run_compiles([member.request for member in batch])
            note = COMPILING_NOTE if compiles else ""
            for member in batch:
                member.state = JobState.RUNNING
                member.started_at = self._clock()
                member.note = note
            if self.store is not None:  # an fsync, off the loop; after RUNNING, so a cancel meanwhile is a flag
                await asyncio.to_thread(self.store.count_runs, [member.job_id for member in batch])

            def progress(step: int, total: int, batch: list[Job] = batch) -> None:
                # A batch stops only when every job in it was cancelled; the others carry it on.
                if all(member._cancel.is_set() for member in batch):
                    raise GenerationCancelled(f"{', '.join(m.job_id for m in batch)} cancelled")
                for member in batch:
                    loop.call_soon_threadsafe(_set_progress, member, step, total)

            try:
                results = await loop.run_in_executor(self._executor, self._generate, batch, progress)
            except GenerationCancelled as exc:
                for member in batch:
                    self._finish(member, JobState.CANCELLED, error=exc)
            except Exception as exc:
                log.exception("%s failed", ", ".join(m.job_id for m in batch))
                for member in batch:
                    self._finish(member, JobState.FAILED, error=exc)
            else:
                self._recent_s.append(self._clock() - job.started_at)  # type: ignore[operator]
                for member, result in zip(batch, results, strict=True):
                    if member._cancel.is_set():
                        self._finish(member, JobState.CANCELLED, error=GenerationCancelled(member.job_id))
                    else:
                        self._finish(member, JobState.DONE, result=result, forget=False)  # see forget()
            finally:
                self._running = []

    def _generate(self, batch: list[Job], progress: ProgressCallback) -> list[GenerationResult]:
        if len(batch) == 1:
            return [self.generator.generate(batch[0].request, progress)]
        return self.generator.generate_batch([job.request for job in batch], progress)

    def _compatible_with(self, first: Job) -> list[Job]:
        """Waiting jobs that can share `first`'s pipeline call (cross-request batching), taken in
        fair order, up to `batch_size` in all; only when the generator can batch."""
        key = batch_key(first.request)
        if self.batch_size <= 1 or not key or not self.generator.can_batch:
            return []
        taken: list[Job] = []
        for job in self.order():
            if len(taken) >= self.batch_size - 1:
                break
            if batch_key(job.request) == key:
                self._waiting[job.user_id].remove(job)
                self._positions = None
                if not self._waiting[job.user_id]:
                    del self._waiting[job.user_id]
                taken.append(job)
        return taken

    def _finish(self, job: Job, state: JobState, *, result: GenerationResult | None = None,
                error: BaseException | None = None, forget: bool = True) -> None:
        job.state = state
        self._jobs.pop(job.job_id, None)
        if forget and self.store is not None:
            self.store.remove(job.job_id)
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]


def _set_progress(job: Job, step: int, total: int) -> None:
    job.step, job.total_steps = step, total


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("queue worker stopped", exc_info=task.exception())
