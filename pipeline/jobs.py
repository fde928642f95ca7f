"""Jobs and the `JobQueue` protocol: what the service and the cogs know of a queue, shared by the
in-process `LocalQueue` (pipeline.queue) and the Redis one (pipeline.redis_queue).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable

from pipeline.requests import GenerationRequest, GenerationResult

T = TypeVar("T")


class QueueLimitError(Exception):
    """A job was refused by a queue limit; the message says which, `retry_after_s` when to retry."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


COMPILING_NOTE = "first run of this size since start-up: compiling the model for it, so slower this once"


class QueueClosed(Exception):
    """The job's queue closed before the job finished (or before it was accepted). `kept`: it lives
    on (the job store, Redis) and a restarted bot resumes it; otherwise it is gone with the process."""

    def __init__(self, kept: bool) -> None:
        super().__init__("the queue closed; the job " + ("stays queued" if kept else "was dropped"))
        self.kept = kept


class Limit(StrEnum):
    PER_USER = "per_user"
    DEPTH = "depth"
    COOLDOWN = "cooldown"


def limit_error(limit: Limit, value: float, *, max_per_user: int, cooldown_s: float,
                retry_after_s: float | None) -> QueueLimitError:
    """The one wording of each queue limit, shared by the in-process and the Redis queue.
    `value`: the user's jobs (PER_USER), the jobs waiting (DEPTH), or seconds left (COOLDOWN)."""
    if limit is Limit.PER_USER:
        return QueueLimitError(f"You already have {value:.0f} job(s) in the queue (the limit is {max_per_user}); "
                               "wait for one to finish.", retry_after_s)
    if limit is Limit.DEPTH:
        return QueueLimitError(f"The queue is full ({value:.0f} jobs waiting); try again in a minute.", retry_after_s)
    return QueueLimitError(f"Slow down: one prompt every {cooldown_s:g} s; try again in {value:.0f} s.", value)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Job:
    """One request in the queue. Mutated only on the event loop (progress arrives via call_soon)."""

    job_id: str
    user_id: int
    request: GenerationRequest
    submitted_at: float
    future: asyncio.Future[GenerationResult]
    state: JobState = JobState.QUEUED
    step: int = 0
    total_steps: int = 0
    started_at: float | None = None
    note: str = ""  # said to the user while it runs, e.g. that this run compiles first
    meta: dict[str, Any] = field(default_factory=dict)  # opaque to the queue: who to answer, and where
    _cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    """What a user is shown about a job: its place in line, an ETA, or its step progress."""

    state: JobState
    position: int  # 1 = next to run; 0 when running or finished
    eta_s: float | None
    step: int
    total_steps: int
    job_id: str = ""  # lets the acknowledgement carry a Cancel button for this job
    note: str = ""  # e.g. "first run at this size: compiling"


@dataclass(frozen=True)
class JobListing:
    """One line of `/queue`: any process's job, running or waiting."""

    job_id: str
    user_id: int
    prompt: str
    status: JobStatus
    waited_s: float
    meta: dict[str, Any] = field(default_factory=dict)  # as submitted: says where it was asked (who may see it)


@dataclass(frozen=True)
class PendingJob:
    """A job submitted by an earlier run of the bot whose answer nobody collected (durable queues)."""

    job_id: str
    user_id: int
    request: GenerationRequest
    meta: dict[str, Any]  # what the submitter passed to submit(meta=...)
    state: JobState
    submitted_at: float  # wall clock (time.time())


@runtime_checkable
class JobQueue(Protocol):
    """What the service and the app use of a queue: exactly this, so LocalQueue and RedisQueue swap."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, request: GenerationRequest, *, user_id: int, meta: dict[str, Any] | None = None) -> Job:
        """Queue a request, or raise QueueLimitError; `job.future` resolves to its result. `meta`
        (JSON) is kept with the job, so a durable queue can hand it back after a restart. Async: a
        durable queue writes the job (to disk or Redis) before it returns, off the event loop."""
        ...

    def status(self, job: Job) -> JobStatus:
        """Cheap enough to call every second: position, ETA and step progress as known now."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """Drop a waiting job or stop a running one at its next step; False if it is already over."""
        ...

    async def listing(self) -> list[JobListing]:
        """Every process's running and waiting jobs, running first, then in the order they will run."""
        ...

    async def forget(self, job_id: str) -> None:
        """A done job's answer is now durable elsewhere (its round is journaled): stop keeping it for a
        restart. Until then a durable queue hands a done job back after a crash, so none is lost."""
        ...

    async def pending_jobs(self) -> list[PendingJob]:
        """Jobs an earlier run submitted and nobody answered; empty for a queue that dies with us."""
        ...

    async def resume(self, job_id: str) -> Job:
        """Follow a pending job; its future resolves like a new one's (KeyError if it is gone)."""
        ...

    async def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run blocking work (model loading, CLIPSeg masks) off the event loop."""
        ...
