"""Durable waiting room for the in-process queue: acknowledged jobs survive a crash of the bot.

`LocalQueue` writes each accepted job here before `submit` returns (the point where the user is told
"queued"), and deletes it once the job has ended. A bot restarted after a crash finds what is left
with `pending()` and queues it again, so the user still gets an answer on the acknowledgement.

One small SQLite file (WAL, synchronous=FULL: an acknowledged job is on disk). Jobs are operational
state, not part of the interaction log: the journal and Oxen record the round when it is made.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.requests import GenerationRequest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    request TEXT NOT NULL,
    meta TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True)
class StoredJob:
    job_id: str
    user_id: int
    request: GenerationRequest
    meta: dict[str, Any]
    submitted_at: float  # wall clock (time.time())
    attempts: int = 0  # runs started; a job that keeps taking the process down is given up


class JobStore:
    """Accepted, unfinished jobs in submission order. Thread-safe; each call is one short transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def add(self, job_id: str, user_id: int, request: GenerationRequest, meta: dict[str, Any],
            submitted_at: float) -> None:
        row = (job_id, user_id, json.dumps(request.to_dict()), json.dumps(meta), submitted_at)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO jobs (job_id, user_id, request, meta, submitted_at) "
                             "VALUES (?, ?, ?, ?, ?)", row)

    def count_runs(self, job_ids: list[str]) -> None:
        """Count a run of each job (one batch, one transaction): after a crash, `attempts` tells a
        restart how often it was tried."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE jobs SET attempts = attempts + 1 WHERE job_id = ?",
                                 [(job_id,) for job_id in job_ids])
            self._db.execute("COMMIT")

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def pending(self) -> list[StoredJob]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, user_id, request, meta, submitted_at, attempts FROM jobs ORDER BY seq").fetchall()
        return [StoredJob(job_id, user_id, GenerationRequest.from_dict(json.loads(request)), json.loads(meta),
                          submitted_at, attempts) for job_id, user_id, request, meta, submitted_at, attempts in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
