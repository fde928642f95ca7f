"""`refinery worker`: one GPU process serving the Redis queue (keys and guarantees: pipeline.redis_queue).

Each turn a worker
1. takes over jobs whose worker has been silent for `claim_after_s` (XAUTOCLAIM on P:jobs) — a live
   worker is never silent that long, because a heartbeat thread re-claims what it holds (XCLAIM to
   itself resets the idle time) every claim_after_s / 4 (at most 10 s);
2. else takes the next fair job plus up to batch_size - 1 compatible ones waiting behind it (same
   `batch_key`: text2img with equal steps, guidance and size), runs them as ONE pipeline call
   (`generate_batch`) and splits the images per job;
3. else waits on P:wake for a submit.
It stores each outcome with SET NX and XACKs it in one script, so an answer is never lost (the ack
comes with the stored result, never before) and never doubled (a late duplicate is dropped).

Cancelling: the progress callback reads each job's cancel flag at every step. A batch stops when all
its jobs are cancelled; otherwise the others finish and the cancelled ones are answered "cancelled".
All workers on one prefix must load the same model: jobs do not name one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import redis_scripts
from pipeline.adapters import AdapterUnavailable
from pipeline.generator import Generator
from pipeline.jobs import COMPILING_NOTE, JobState
from pipeline.redis_queue import GROUP
from pipeline.requests import GenerationCancelled, GenerationRequest, GenerationResult, batch_key

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Taken:
    """A job this worker now holds: its stream entry, id, request and start time (wall clock)."""

    entry_id: str
    job_id: str
    request: GenerationRequest
    started_at: float


class RedisWorker:
    """Serves one prefix of the Redis queue with one Generator; `run` until `stop` is set."""

    def __init__(self, generator: Generator, client: redis.Redis, *, prefix: str = "refinery",
                 name: str | None = None, batch_size: int = 1, claim_after_s: float = 60.0,
                 result_ttl_s: float = 86400.0, max_attempts: int = 3) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if claim_after_s <= 0:
            raise ValueError(f"claim_after_s must be positive, got {claim_after_s}")
        self.generator = generator
        self.prefix = prefix
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = batch_size
        self.claim_after_s = claim_after_s
        self.result_ttl_s = result_ttl_s
        self.max_attempts = max_attempts
        self._redis = client
        self._take = client.register_script(redis_scripts.TAKE)
        self._adopt = client.register_script(redis_scripts.ADOPT)
        self._finish_script = client.register_script(redis_scripts.FINISH)
        self._heartbeat = client.register_script(redis_scripts.HEARTBEAT)
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    def key(self, *parts: str) -> str:
        return ":".join([self.prefix, *parts])

    def setup(self) -> None:
        """Create the stream and its consumer group if needed, and announce this worker."""
        try:
            self._redis.xgroup_create(self.key("jobs"), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        with self._held_lock:
            held = sorted(self._held)
        self._heartbeat(args=[self.prefix, self.name, repr(time.time()), *held])

    def run(self, stop: threading.Event) -> None:
        self.setup()
        beat = threading.Thread(target=self._beat, args=(stop,), name="refinery-heartbeat", daemon=True)
        beat.start()
        log.info("worker %s serving %s (batch %d, claim after %g s)", self.name, self.prefix,
                 self.batch_size, self.claim_after_s)
        try:
            while not stop.is_set():
                try:
                    self.run_once(wait_s=min(1.0, self.claim_after_s / 2))
                except redis.RedisError as exc:
                    log.warning("worker %s: Redis error (%s); retrying in 1 s", self.name, exc)
                    stop.wait(1.0)
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(redis.RedisError):  # Redis gone: its heartbeat just goes stale
                self._redis.zrem(self.key("workers"), self.name)
            log.info("worker %s stopped", self.name)

    def run_once(self, wait_s: float = 0.0) -> int:
        """One turn: take over stalled jobs, else take a fair batch, else wait up to `wait_s` for a
        submit. Returns how many jobs were handled."""
        taken = self._claim() or self._take_batch()
        if not taken:
            if wait_s > 0:
                self._redis.blpop([self.key("wake")], timeout=wait_s)
            return 0
        for group in self._groups(taken):
            self._run(group)
        return len(taken)

    # --- taking jobs ----------------------------------------------------------------------------

    def _take_batch(self) -> list[Taken]:
        now = time.time()
        flat = self._take(args=[self.prefix, self.name, self.batch_size, max(64, 4 * self.batch_size), repr(now)])
        taken = []
        for entry_id, job_id, request in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
            if request:
                taken.append(Taken(entry_id, job_id, GenerationRequest.from_dict(json.loads(request)), now))
            else:  # its hash expired while it waited: nothing to run, nobody to answer
                self._redis.xack(self.key("jobs"), GROUP, entry_id)
        self._hold(taken)
        return taken

    def _claim(self) -> list[Taken]:
        """Jobs of workers silent for claim_after_s (dead, frozen, or cut off from Redis)."""
        _, entries, _deleted = self._redis.xautoclaim(
            self.key("jobs"), GROUP, self.name, min_idle_time=int(self.claim_after_s * 1000),
            start_id="0-0", count=self.batch_size)
        taken = []
        for entry_id, fields in entries:
            job_id, now = fields["job"], time.time()
            verdict, request = self._adopt(args=[self.prefix, entry_id, job_id, self.name, repr(now),
                                                 self.max_attempts])
            if verdict == "run":
                log.warning("worker %s took over %s from a silent worker", self.name, job_id)
                taken.append(Taken(entry_id, job_id, GenerationRequest.from_dict(json.loads(request)), now))
            elif verdict == "cancelled":
                self._finish(entry_id, job_id, JobState.CANCELLED, error=f"{job_id} was cancelled")
            elif verdict == "poison":
                self._finish(entry_id, job_id, JobState.FAILED,
                             error=f"workers stopped {self.max_attempts} times while running this job")
        self._hold(taken)
        return taken

    def _groups(self, taken: list[Taken]) -> list[list[Taken]]:
        """Compatible jobs together (up to batch_size), when the generator can run them as one call."""
        if not self.generator.can_batch:
            return [[t] for t in taken]
        groups: dict[str, list[list[Taken]]] = {}
        singles = []
        for t in taken:
            key = batch_key(t.request)
            if not key:
                singles.append([t])
                continue
            runs = groups.setdefault(key, [[]])
            if len(runs[-1]) >= self.batch_size:
                runs.append([])
            runs[-1].append(t)
        return [run for runs in groups.values() for run in runs] + singles

    # --- running --------------------------------------------------------------------------------

    def _run(self, group: list[Taken]) -> None:
        cancelled: set[str] = set()
        started = time.perf_counter()
        try:
            self._tell_if_compiling(group)  # inside: a Redis error must still release the held entries
            if len(group) > 1:
                results = self.generator.generate_batch(  # type: ignore[attr-defined]
                    [t.request for t in group], self._progress(group, cancelled))
            else:
                results = [self.generator.generate(group[0].request, self._progress(group, cancelled))]
        except GenerationCancelled as exc:
            for t in group:
                self._finish(t.entry_id, t.job_id, JobState.CANCELLED, error=str(exc))
        except Exception as exc:
            if len(group) > 1:
                # One bad request must not fail the others: run each alone.
                log.warning("a batch of %d failed (%s); running its jobs one by one", len(group), exc)
                for t in group:
                    self._run([t])
                return
            log.exception("%s failed on worker %s", group[0].job_id, self.name)
            # A refused adapter is the user's to read (which file is missing or differs): say so in the
            # outcome, so the bot raises the same AdapterUnavailable as an in-process queue would.
            refusal = str(exc) if isinstance(exc, AdapterUnavailable) else None
            self._finish(group[0].entry_id, group[0].job_id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}",
                         refusal=refusal)
        else:
            # Seconds of worker time per job: what the ETA of a job further back in line depends on.
            per_job = (time.perf_counter() - started) / len(group)
            for t, result in zip(group, results, strict=True):
                if t.job_id in cancelled:
                    self._finish(t.entry_id, t.job_id, JobState.CANCELLED, error=f"{t.job_id} was cancelled")
                else:
                    self._finish(t.entry_id, t.job_id, JobState.DONE, result=result, duration=per_job)
        finally:
            with self._held_lock:
                self._held.difference_update(t.entry_id for t in group)

    def _tell_if_compiling(self, group: list[Taken]) -> None:
        """When this run compiles first (a shape the warm-up did not cover), say so to the bots."""
        if not self.generator.first_run_compiles([t.request for t in group]):
            return
        pipe = self._redis.pipeline(transaction=False)
        for t in group:
            pipe.hset(self.key("job", t.job_id), "note", COMPILING_NOTE)
            pipe.publish(self.key("events"), json.dumps({"job": t.job_id, "state": "running", "note": COMPILING_NOTE,
                                                         "t": t.started_at}))
        pipe.execute()

    def _progress(self, group: list[Taken], cancelled: set[str]) -> Callable[[int, int], None]:
        job_keys = [self.key("job", t.job_id) for t in group]

        def progress(step: int, total: int) -> None:
            pipe = self._redis.pipeline(transaction=False)
            for job_key in job_keys:
                pipe.hget(job_key, "cancel")
            for t, job_key in zip(group, job_keys, strict=True):
                pipe.hset(job_key, mapping={"step": step, "total": total})
                pipe.publish(self.key("events"), json.dumps({"job": t.job_id, "state": "running", "step": step,
                                                             "total": total, "t": t.started_at}))
            flags = pipe.execute()[: len(group)]
            cancelled.update(t.job_id for t, flag in zip(group, flags, strict=True) if flag)
            if len(cancelled) == len(group):
                raise GenerationCancelled(f"{', '.join(sorted(cancelled))} cancelled")

        return progress

    def _finish(self, entry_id: str, job_id: str, state: JobState, *, result: GenerationResult | None = None,
                error: str = "", duration: float | None = None, refusal: str | None = None) -> bool:
        outcome: dict[str, Any] = {"state": state.value}
        if result is not None:
            outcome["result"] = result.to_dict()
        else:
            outcome["error"] = error
        if refusal is not None:
            outcome["refusal"] = refusal
        written = self._finish_script(args=[
            self.prefix, entry_id, job_id, state.value, json.dumps(outcome), int(self.result_ttl_s),
            repr(time.time()), "" if duration is None else repr(duration)])
        if written:
            log.info("%s %s on worker %s", job_id, state.value, self.name)
        else:
            log.warning("%s already had an answer; worker %s's late %s is dropped", job_id, self.name,
                        state.value)
        return bool(written)

    def _hold(self, taken: list[Taken]) -> None:
        with self._held_lock:
            self._held.update(t.entry_id for t in taken)

    def _beat(self, stop: threading.Event) -> None:
        # Often enough to keep held jobs fresh (claim_after / 4) and to count as live for ETAs (30 s).
        while not stop.wait(min(10.0, max(0.1, self.claim_after_s / 4))):
            try:
                self.heartbeat()
            except redis.RedisError as exc:
                log.warning("worker %s: heartbeat failed (%s)", self.name, exc)


def serve(generator: Generator, url: str, *, prefix: str = "refinery", name: str | None = None,
          batch_size: int = 1, claim_after_s: float = 60.0) -> int:
    """The `refinery worker` process: load the model, then serve until SIGINT/SIGTERM (which let the
    current job finish; a killed worker's jobs are taken over by the others after claim_after_s)."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        log.error("cannot reach Redis at %s: %s", url.split("@")[-1], exc)  # never log a password
        return 2
    generator.load()
    generator.warm_up()  # compiles before the first job is taken
    worker = RedisWorker(generator, client, prefix=prefix, name=name, batch_size=batch_size,
                         claim_after_s=claim_after_s)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    worker.run(stop)
    client.close()
    return 0
