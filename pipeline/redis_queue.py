"""The Redis `JobQueue`: bot processes submit here; `refinery worker` processes (pipeline.redis_worker)
do the GPU work. Jobs, fairness, limits and results all live in Redis, so a bot restart loses nothing.

Keys, for a prefix P ("refinery"; write it as "{refinery}" on Redis Cluster so all keys share a slot):

    P:job:<id>     hash    request JSON, prompt, user_id, meta JSON, submitted_at, bkey, state, step, total,
                           cancel, worker, attempts, started_at, finished_at, writes
    P:q:<user>     list    the user's waiting job ids, oldest first
    P:ring         list    users with waiting jobs, in round-robin order (head = served next)
    P:waiting      set     every waiting job (the depth limit)
    P:user:<user>  set     the user's waiting or running jobs (the per-user limit)
    P:cool:<user>  string  exists while the user's cooldown runs (PX expiry)
    P:open         zset    submitted jobs whose answer no bot has collected yet (pending_jobs/resume)
    P:running      zset    running job → started_at;  P:durations: the last 20 run times (both ETA)
    P:workers      zset    worker name → last heartbeat (ETA divides the line among live workers)
    P:jobs         stream  jobs handed to workers; group "workers" records who holds which (XAUTOCLAIM)
    P:result:<id>  string  the outcome JSON, written once (SET NX), with a TTL
    P:events       pubsub  {"job", "state", "step", "total", "t"} on every start, step and finish
    P:wake         list    a token per submit, so idle workers BLPOP instead of polling

Fairness: one list per user plus a ring of users, as LocalQueue keeps them in memory. A worker's
take script pops the ring's head user's oldest job and moves that user to the back — atomically, so
however many bots submit and workers take, "A submits 5, B 1 → B's runs second" holds. A job enters
the stream only when taken (XADD and XREADGROUP in the same script): the stream's consumer group
then records which worker holds it, which is what XAUTOCLAIM needs when that worker dies.

Exactly one answer: the outcome is written with SET NX in the same script that XACKs, so a job run
twice (its worker stalled past claim-after, another took it over) keeps its first outcome; the late
one is dropped and counted nowhere (`writes` in the job hash stays 1). The bot resolves a future once.

Bot side: everything goes through `redis.asyncio`, so a slow or hanging Redis never blocks the event
loop (the gateway, other users' votes and commands go on); `submit` and `cancel` use their own
connection pool with a socket timeout (`command_timeout_s`), after which the user is told the queue
is unavailable. Status is served from memory, fed by P:events and a poll every `poll_s` that also
catches events missed on reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from pipeline import redis_scripts
from pipeline.adapters import AdapterUnavailable
from pipeline.jobs import (
    Job,
    JobListing,
    JobState,
    JobStatus,
    Limit,
    PendingJob,
    QueueClosed,
    QueueLimitError,
    limit_error,
)
from pipeline.requests import GenerationCancelled, GenerationRequest, GenerationResult, batch_key

log = logging.getLogger(__name__)
T = TypeVar("T")
GROUP = "workers"
FINISHED = {JobState.DONE.value, JobState.FAILED.value, JobState.CANCELLED.value}

class RemoteGenerationError(RuntimeError):
    """A worker could not make the job's images; the message is the worker's error."""


def outcome_error(outcome: dict[str, Any]) -> BaseException:
    """The exception a failed or cancelled job's stored outcome stands for: the same types an in-process
    queue raises (a cancel, a refused adapter), else RemoteGenerationError with the worker's message."""
    if outcome.get("state") == JobState.CANCELLED.value:
        return GenerationCancelled(outcome.get("error", "cancelled"))
    if outcome.get("refusal") is not None:
        return AdapterUnavailable(outcome["refusal"])
    return RemoteGenerationError(outcome.get("error", "the worker failed"))


class QueueUnavailable(QueueLimitError):
    """Redis could not be reached; like a full queue, the user should simply try again later."""


def estimate_eta(position: int, per_job_s: float | None, workers: int, running_elapsed: list[float]) -> float | None:
    """Seconds until the job at `position` starts: each live worker takes the next job when its
    current one (estimated at `per_job_s`) ends. With one worker this is LocalQueue's estimate."""
    if per_job_s is None or position < 1:
        return None
    busy = sorted(max(0.0, per_job_s - elapsed) for elapsed in running_elapsed)
    free_at = ([0.0] * max(0, workers - len(busy)) + busy)[: max(1, workers)]
    heapq.heapify(free_at)
    for _ in range(position - 1):
        heapq.heappush(free_at, heapq.heappop(free_at) + per_job_s)
    return free_at[0]


class RedisQueue:
    """The bot's side of the Redis queue: submit, follow, cancel and collect jobs (see module doc)."""

    def __init__(self, url: str, *, prefix: str = "refinery", max_depth: int = 100, max_per_user: int = 3,
                 cooldown_s: float = 0.0, poll_s: float = 0.5, result_ttl_s: float = 86400.0,
                 command_timeout_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.max_depth = max_depth
        self.max_per_user = max_per_user
        self.cooldown_s = cooldown_s
        self.poll_s = poll_s
        self.result_ttl_s = result_ttl_s
        self._clock = clock
        # Submit and cancel answer a user: their own pool, bounded by a socket timeout. The other client
        # also carries the pub/sub subscription, whose reads wait as long as no event comes.
        self._commands = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=command_timeout_s,
                                                 socket_connect_timeout=command_timeout_s)
        self._aredis = aioredis.Redis.from_url(url, decode_responses=True)
        self._submit = self._commands.register_script(redis_scripts.SUBMIT)
        self._cancel = self._commands.register_script(redis_scripts.CANCEL)
        self._order = self._commands.register_script(redis_scripts.ORDER)
        self._jobs: dict[str, Job] = {}
        self._positions: dict[str, int] = {}
        self._order_ids: list[str] = []
        self._per_job_s: float | None = None
        self._workers = 1
        self._running_elapsed: list[float] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pubsub: Any = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refinery-cpu")

    def key(self, *parts: str | int) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check Redis is there, subscribe to P:events, and start following jobs."""
        await self._aredis.ping()
        self._pubsub = self._aredis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.key("events"))
        self._spawn(self._listen(), "refinery-redis-events")
        self._spawn(self._poll(), "refinery-redis-poll")

    async def close(self) -> None:
        """Stop following jobs. They stay queued in Redis: a restarted bot finds them in pending_jobs()."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pubsub is not None:
            await self._pubsub.aclose()
        for job in list(self._jobs.values()):
            self._settle(job, JobState.CANCELLED, error=QueueClosed(kept=True))
            job.future.exception()  # marks it seen: nobody need await a future that ends with the bot
        await self._aredis.aclose()
        await self._commands.aclose()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Blocking work off the loop, on one CPU thread: the bot has no GPU, so e.g. CLIPSeg masks
        (a small model) are computed here on the CPU, one at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # --- the JobQueue interface -----------------------------------------------------------------

    async def submit(self, request: GenerationRequest, *, user_id: int, meta: dict[str, Any] | None = None) -> Job:
        """Queue a request for any worker; `meta` (JSON) is kept with the job for pending_jobs()."""
        if self._closed:
            raise QueueClosed(kept=False)  # shutting down: nothing new is accepted
        loop = asyncio.get_running_loop()
        job_id = f"job-{uuid.uuid4().hex[:16]}"
        try:
            meta_json = json.dumps(meta or {})
        except TypeError as exc:
            raise ValueError(f"meta must be JSON-serialisable: {exc}") from None
        try:
            kind, value = await self._submit(args=[
                self.prefix, job_id, user_id, self.max_per_user, self.max_depth, round(self.cooldown_s * 1000),
                json.dumps(request.to_dict()), meta_json, repr(time.time()), batch_key(request),
                request.prompt[:200]])  # /queue shows the prompt without reading a request's images
        except (redis.RedisError, OSError) as exc:  # a timeout included: the user hears at once
            log.error("could not queue a job for user %s: %s", user_id, exc)
            raise QueueUnavailable("The image queue is unreachable right now; try again in a minute.", 60.0) from exc
        value = int(value)
        if kind in set(Limit):
            limit = Limit(kind)
            amount = value / 1000 if limit is Limit.COOLDOWN else value  # the script counts milliseconds
            retry = self.eta_s(value if limit is Limit.PER_USER else 1)
            raise limit_error(limit, amount, max_per_user=self.max_per_user, cooldown_s=self.cooldown_s,
                              retry_after_s=retry)
        job = Job(job_id=job_id, user_id=user_id, request=request, submitted_at=self._clock(),
                  future=loop.create_future(), meta=dict(meta or {}))
        self._jobs[job_id] = job
        self._positions[job_id] = value
        log.info("queued %s for user %s in Redis (position %d)", job_id, user_id, value)
        return job

    async def cancel(self, job_id: str) -> bool:
        """Cancel any job on this prefix, from any process: a waiting one is removed now, a running
        one is flagged and its worker stops at the next step."""
        outcome = json.dumps({"state": JobState.CANCELLED.value, "error": "cancelled while waiting"})
        try:
            verdict = await self._cancel(args=[self.prefix, job_id, outcome, int(self.result_ttl_s),
                                               repr(time.time())])
        except (redis.RedisError, OSError) as exc:
            log.error("could not cancel %s: %s", job_id, exc)
            raise QueueUnavailable("The image queue is unreachable right now; try again in a minute.", 60.0) from exc
        job = self._jobs.get(job_id)
        if verdict == 2 and job is not None:
            # Answered here and now, as LocalQueue does; so this bot has collected it too.
            self._settle(job, JobState.CANCELLED, error=GenerationCancelled("cancelled while waiting"))
            await self._commands.zrem(self.key("open"), job_id)
        return verdict > 0

    def status(self, job: Job) -> JobStatus:
        position = self._positions.get(job.job_id, 0) if job.state is JobState.QUEUED else 0
        eta = self.eta_s(position) if position else None
        return JobStatus(job.state, position, eta, job.step, job.total_steps, job.job_id, job.note)

    def eta_s(self, position: int) -> float | None:
        return estimate_eta(position, self._per_job_s, self._workers, self._running_elapsed)

    async def listing(self) -> list[JobListing]:
        """Every bot's running and waiting jobs on this prefix, read from Redis in one round trip
        (plus the fair-order script): running first, then in the order the workers will take them."""
        try:
            running = [job_id for job_id, _ in await self._commands.zrange(self.key("running"), 0, -1,
                                                                           withscores=True)]
            waiting = [job_id for job_id in await self._order(args=[self.prefix, self.max_depth])
                       if job_id not in running]
            pipe = self._commands.pipeline(transaction=False)
            for job_id in running + waiting:
                pipe.hmget(self.key("job", job_id), "user_id", "prompt", "submitted_at", "step", "total", "meta")
            rows = await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.error("could not list the queue: %s", exc)
            raise QueueUnavailable("The image queue is unreachable right now; try again in a minute.", 60.0) from exc
        now, listed = time.time(), []
        for index, (job_id, (user_id, prompt, submitted, step, total, meta)) in enumerate(
                zip(running + waiting, rows, strict=True)):
            if user_id is None:
                continue  # finished and expired between the two reads
            position = index - len(running) + 1 if index >= len(running) else 0
            state = JobState.QUEUED if position else JobState.RUNNING
            status = JobStatus(state, position, self.eta_s(position) if position else None, int(step or 0),
                               int(total or 0), job_id)
            listed.append(JobListing(job_id, int(user_id), prompt or "", status,
                                     max(0.0, now - float(submitted or now)), json.loads(meta or "{}")))
        return listed

    # --- restarts -------------------------------------------------------------------------------

    async def forget(self, job_id: str) -> None:
        await self._aredis.zrem(self.key("open"), job_id)

    async def pending_jobs(self) -> list[PendingJob]:
        """Jobs no bot has collected the answer of (waiting, running, or finished while no bot was
        listening), oldest first. A restarted bot re-attaches to them with resume()."""
        job_ids = await self._aredis.zrange(self.key("open"), 0, -1)
        pipe = self._aredis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.key("job", job_id), "user_id", "request", "meta", "state", "submitted_at")
        found = []
        for job_id, (user_id, request, meta, state, submitted) in zip(job_ids, await pipe.execute(), strict=True):
            if request is None:  # its hash expired: nothing left to resume
                await self._aredis.zrem(self.key("open"), job_id)
                continue
            found.append(PendingJob(job_id, int(user_id), GenerationRequest.from_dict(json.loads(request)),
                                    json.loads(meta or "{}"), JobState(state), float(submitted)))
        return found

    async def resume(self, job_id: str) -> Job:
        """Follow a job submitted by an earlier run of the bot; its future resolves like a new one's."""
        if job_id in self._jobs:
            return self._jobs[job_id]  # already followed: one Job, one future
        user_id, request, state, submitted, meta = await self._aredis.hmget(
            self.key("job", job_id), "user_id", "request", "state", "submitted_at", "meta")
        if request is None:
            raise KeyError(f"job {job_id} is not in Redis under {self.prefix!r}")
        age = max(0.0, time.time() - float(submitted))
        job = Job(job_id=job_id, user_id=int(user_id), request=GenerationRequest.from_dict(json.loads(request)),
                  submitted_at=self._clock() - age, future=asyncio.get_running_loop().create_future(),
                  state=JobState(state), meta=json.loads(meta or "{}"))
        self._jobs[job_id] = job
        if state in FINISHED:
            await self._collect(job_id)
        return job

    # --- following jobs -------------------------------------------------------------------------

    # Both loops test _closed as well as being cancelled: redis-py can turn a cancellation that lands
    # mid-command into a ConnectionError, which these loops would otherwise shrug off and go on.

    async def _listen(self) -> None:
        while not self._closed:
            try:
                async for message in self._pubsub.listen():
                    self._on_event(json.loads(message["data"]))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # The poll loop covers what is missed meanwhile; resubscribe after a pause.
                log.warning("lost the Redis event subscription (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(redis.RedisError):
                    await self._pubsub.subscribe(self.key("events"))

    def _on_event(self, event: dict[str, Any]) -> None:
        job = self._jobs.get(event.get("job", ""))
        if job is None or job.finished:
            return
        state = event.get("state")
        if state == JobState.RUNNING.value:
            self._mark_running(job, event.get("t"))
            job.step, job.total_steps = int(event.get("step", job.step)), int(event.get("total", job.total_steps))
            job.note = event.get("note", job.note)
        elif state in FINISHED:
            self._spawn(self._collect(job.job_id), f"refinery-collect-{job.job_id}")

    def _mark_running(self, job: Job, started_wall: float | str | None) -> None:
        if job.state is not JobState.RUNNING or job.started_at is None:
            age = max(0.0, time.time() - float(started_wall)) if started_wall else 0.0
            job.state, job.started_at = JobState.RUNNING, self._clock() - age  # in our clock's terms

    async def _poll(self) -> None:
        while not self._closed:
            try:
                await self._refresh()
            except redis.RedisError as exc:
                log.warning("could not refresh job states from Redis: %s", exc)
            await asyncio.sleep(self.poll_s)

    async def _refresh(self) -> None:
        """One pipelined read: every open local job's state, plus what positions and ETAs need."""
        open_jobs = [job for job in self._jobs.values() if not job.finished]
        if not open_jobs:
            return
        now = time.time()
        pipe = self._aredis.pipeline(transaction=False)
        for job in open_jobs:
            pipe.hmget(self.key("job", job.job_id), "state", "step", "total", "started_at", "note")
        pipe.lrange(self.key("durations"), 0, -1)
        pipe.zcount(self.key("workers"), now - 30, "+inf")  # heartbeat within 30 s = alive
        pipe.zrange(self.key("running"), 0, -1, withscores=True)
        *states, durations, workers, running = await pipe.execute()
        for job, (state, step, total, started, note) in zip(open_jobs, states, strict=True):
            if state is None:
                self._settle(job, JobState.FAILED, error=RemoteGenerationError(f"{job.job_id} vanished from Redis"))
            elif state in FINISHED:
                await self._collect(job.job_id)
            elif state == JobState.RUNNING.value:
                self._mark_running(job, started)
                job.step, job.total_steps, job.note = int(step or 0), int(total or 0), note or ""
        self._per_job_s = sum(map(float, durations)) / len(durations) if durations else None
        self._workers = max(1, int(workers))
        self._running_elapsed = [max(0.0, now - started) for _, started in running]
        if any(job.state is JobState.QUEUED for job in open_jobs):
            self._order_ids = await self._order(args=[self.prefix, self.max_depth])
            self._positions = {job_id: index + 1 for index, job_id in enumerate(self._order_ids)}

    async def _collect(self, job_id: str) -> None:
        """Resolve the job's future from its stored outcome (once); a failed or cancelled job is then
        collected, a done one only when the bot says its round is journaled (`forget`)."""
        job = self._jobs.get(job_id)
        if job is None or job.future.done():
            return
        raw = await self._aredis.get(self.key("result", job_id))
        if raw is None:
            self._settle(job, JobState.FAILED, error=RemoteGenerationError(f"{job_id} finished but its result expired"))
        else:
            outcome = json.loads(raw)
            state = JobState(outcome["state"])
            if state is JobState.DONE:
                self._settle(job, state, result=GenerationResult.from_dict(outcome["result"]))
                return  # stays open until the bot has journaled its round: forget()
            self._settle(job, state, error=outcome_error(outcome))
        await self._aredis.zrem(self.key("open"), job_id)

    def _settle(self, job: Job, state: JobState, *, result: GenerationResult | None = None,
                error: BaseException | None = None) -> None:
        job.state = state
        self._jobs.pop(job.job_id, None)
        self._positions.pop(job.job_id, None)
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped", task.get_name(), exc_info=task.exception())
