"""The SQLite journal: the point of acknowledgement for everything Refinery keeps.

The bot reacts to an event only after `append` has committed it here (WAL, synchronous=FULL, so a
committed transaction survives a crash or power loss). The Oxen writer process drains the journal in
group commits and marks events synced once Oxen has them.

Besides `events` the journal keeps small query tables (`rounds`, `round_messages`, `votes`) that are
updated in the same transaction as the event, so a read never sees an event without its effect.

Threading: one `sqlite3` connection per `Journal`, opened with `check_same_thread=False` and guarded
by a lock, so any thread may call it; calls are serialised. On the asyncio loop use
`storage.async_journal.AsyncJournal`, which confines the journal to one thread and groups concurrent
appends into one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from storage.records import RECORD_TYPES, VOTE_SOURCES, Record, Round, RoundPosted, VoteEvent

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    synced_commit TEXT NULL
);
CREATE INDEX IF NOT EXISTS events_unsynced ON events(seq) WHERE synced_commit IS NULL;
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, seq);
CREATE TABLE IF NOT EXISTS rounds(round_id TEXT PRIMARY KEY, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS round_messages(message_id INTEGER PRIMARY KEY, round_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS round_messages_round ON round_messages(round_id);
CREATE TABLE IF NOT EXISTS votes(
    round_id TEXT NOT NULL, candidate INTEGER NOT NULL, user_id INTEGER NOT NULL,
    PRIMARY KEY(round_id, candidate, user_id)
) WITHOUT ROWID;
"""


class JournalError(Exception):
    """Base of the journal's errors."""


class JournalClosedError(JournalError):
    """The journal (or its async front) was closed before the call."""


@dataclass(frozen=True)
class JournalEvent:
    seq: int
    kind: str
    record: Record
    created_at: float  # when the journal acknowledged it (time.time())


@dataclass(frozen=True)
class JournalStats:
    events_total: int
    unsynced: int
    by_kind: dict[str, int]
    unsynced_by_kind: dict[str, int]
    file_bytes: int  # database + WAL
    oldest_unsynced_age_s: float | None
    last_seq: int
    synced_through: int


def validate_record(record: Record) -> None:
    if not isinstance(record, Record) or RECORD_TYPES.get(record.kind) is not type(record):
        raise ValueError(f"not a journal record: {record!r}")
    if isinstance(record, VoteEvent) and record.action not in ("add", "remove"):
        raise ValueError(f"vote action must be 'add' or 'remove', got {record.action!r}")
    if isinstance(record, VoteEvent) and record.source not in VOTE_SOURCES:
        raise ValueError(f"vote source must be one of {', '.join(VOTE_SOURCES)}, got {record.source!r}")


def _decode(kind: str, payload: str) -> Record:
    cls = RECORD_TYPES.get(kind)
    if cls is None:
        raise JournalError(f"journal holds an event of unknown kind {kind!r}")
    return cls.from_dict(json.loads(payload))


class Journal:
    """The durable event log plus its query tables. See the module docstring for threading."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._closed = False
        self.transactions = 0  # committed append transactions, to show that group commit groups
        # Autocommit mode: every transaction is an explicit BEGIN IMMEDIATE ... COMMIT below, so
        # the write lock is taken up front and a busy writer process makes us wait, not fail later.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('journal_id', ?)", (uuid.uuid4().hex,))
            self.journal_id: str = self._scalar("SELECT value FROM meta WHERE key='journal_id'")

    # -- plumbing -------------------------------------------------------------------------------
    def _scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise JournalClosedError(f"journal {self.path} is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return result

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                raise JournalClosedError(f"journal {self.path} is closed")
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # -- writing --------------------------------------------------------------------------------
    def append(self, *records: Record) -> list[int]:
        """Journal `records` in one durable transaction; returns their seqs in order."""
        return self.append_groups([records])[0]

    def append_groups(self, groups: Sequence[Sequence[Record]]) -> list[list[int]]:
        """Journal several callers' records in ONE transaction (group commit); seqs per group.

        A VoteEvent that would not change the vote state (a repeated add, a remove of a vote that
        is not there) is not journaled: its seq is 0."""
        for group in groups:
            for record in group:
                validate_record(record)
        encoded = [[(r, json.dumps(r.to_dict(), separators=(",", ":"))) for r in g] for g in groups]

        def insert(db: sqlite3.Connection) -> list[list[int]]:
            at = time.time()
            out: list[list[int]] = []
            for group in encoded:
                seqs = []
                for record, payload in group:
                    if isinstance(record, VoteEvent) and not self._vote_changes(db, record):
                        seqs.append(0)  # a repeated add or a remove of nothing: not an event
                        continue
                    cur = db.execute(
                        "INSERT INTO events(kind, payload, created_at) VALUES (?, ?, ?)",
                        (record.kind, payload, at),
                    )
                    seqs.append(int(cur.lastrowid or 0))
                    self._apply(db, record, payload)
                out.append(seqs)
            self.transactions += 1  # under the lock; counted even if COMMIT fails, which is rare
            return out

        return self._write(insert)

    @staticmethod
    def _vote_changes(db: sqlite3.Connection, vote: VoteEvent) -> bool:
        """Checked inside the appending transaction, so concurrent reaction events stay idempotent."""
        exists = db.execute(
            "SELECT 1 FROM votes WHERE round_id=? AND candidate=? AND user_id=?",
            (vote.round_id, vote.candidate, vote.user_id),
        ).fetchone()
        return (exists is None) == (vote.action == "add")

    @staticmethod
    def _apply(db: sqlite3.Connection, record: Record, payload: str) -> None:
        """Keep the query tables in step with the event, inside the event's transaction."""
        if isinstance(record, Round):
            db.execute("INSERT OR REPLACE INTO rounds VALUES (?, ?)", (record.round_id, payload))
        elif isinstance(record, RoundPosted):
            db.execute(
                "INSERT OR REPLACE INTO round_messages VALUES (?, ?)", (record.message_id, record.round_id)
            )
        elif isinstance(record, VoteEvent):
            key = (record.round_id, record.candidate, record.user_id)
            if record.action == "add":
                db.execute("INSERT OR IGNORE INTO votes VALUES (?, ?, ?)", key)
            else:
                db.execute("DELETE FROM votes WHERE round_id=? AND candidate=? AND user_id=?", key)

    def mark_synced(self, up_to_seq: int, commit_id: str) -> int:
        """Record that every event up to `up_to_seq` is in Oxen commit `commit_id`; returns rows marked."""

        def mark(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE events SET synced_commit=? WHERE seq<=? AND synced_commit IS NULL",
                (commit_id, up_to_seq),
            )
            db.execute(
                "INSERT INTO meta VALUES ('synced_through', ?) ON CONFLICT(key) DO UPDATE SET "
                "value=max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                (str(up_to_seq),),
            )
            return cur.rowcount

        return self._write(mark)

    def mark_unsynced_after(self, seq: int) -> int:
        """Forget sync marks above `seq` (the repository is behind the journal, e.g. it was replaced)."""

        def unmark(db: sqlite3.Connection) -> int:
            cur = db.execute("UPDATE events SET synced_commit=NULL WHERE seq>? AND synced_commit IS NOT NULL",
                             (seq,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('synced_through', ?)", (str(seq),))
            return cur.rowcount

        return self._write(unmark)

    def reserve_seqs_through(self, seq: int, *, only_if_fresh: bool) -> bool:
        """Make new events number above `seq`, so they never reuse seqs a repository already holds.
        With `only_if_fresh`, do it only if no event at or below `seq` exists (checked in the same
        transaction as the bump, so a concurrent append cannot slip under it); False if one does."""

        def bump(db: sqlite3.Connection) -> bool:
            low = db.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if only_if_fresh and low is not None and low <= seq:
                return False
            current = db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            if current is None:
                db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('events', ?)", (seq,))
            elif current[0] < seq:
                db.execute("UPDATE sqlite_sequence SET seq=? WHERE name='events'", (seq,))
            return True

        return self._write(bump)

    # -- reading: query tables -------------------------------------------------------------------
    def round(self, round_id: str) -> Round | None:
        rows = self._read("SELECT payload FROM rounds WHERE round_id=?", (round_id,))
        return Round.from_dict(json.loads(rows[0][0])) if rows else None

    def round_for_message(self, message_id: int) -> Round | None:
        rows = self._read(
            "SELECT r.payload FROM round_messages m JOIN rounds r USING(round_id) WHERE m.message_id=?",
            (message_id,),
        )
        return Round.from_dict(json.loads(rows[0][0])) if rows else None

    def message_for_round(self, round_id: str) -> int | None:
        # A round may be posted more than once (a repost); the latest post is the live one.
        rows = self._read(
            "SELECT message_id FROM round_messages WHERE round_id=? ORDER BY rowid DESC LIMIT 1", (round_id,)
        )
        return int(rows[0][0]) if rows else None

    def posted_since(self, since: float) -> list[RoundPosted]:
        """Round messages posted at or after `since` (epoch s, the record's own time), oldest first."""
        rows = self._read(
            "SELECT payload FROM events WHERE kind='round_messages' AND json_extract(payload, '$.created_at') >= ? "
            "ORDER BY seq",
            (since,),
        )
        return [RoundPosted.from_dict(json.loads(row[0])) for row in rows]

    def vote_state(self, round_id: str) -> dict[int, set[int]]:
        state: dict[int, set[int]] = {}
        for candidate, user_id in self._read(
            "SELECT candidate, user_id FROM votes WHERE round_id=?", (round_id,)
        ):
            state.setdefault(int(candidate), set()).add(int(user_id))
        return state

    def has_vote(self, round_id: str, candidate: int, user_id: int) -> bool:
        return bool(
            self._read(
                "SELECT 1 FROM votes WHERE round_id=? AND candidate=? AND user_id=?",
                (round_id, candidate, user_id),
            )
        )

    # -- reading: the event log -------------------------------------------------------------------
    def unsynced(self, limit: int) -> list[JournalEvent]:
        rows = self._read(
            "SELECT seq, kind, payload, created_at FROM events WHERE synced_commit IS NULL "
            "ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [JournalEvent(s, k, _decode(k, p), c) for s, k, p, c in rows]

    def events(
        self, kind: str | None = None, since_seq: int = 0, limit: int | None = None, page: int = 500
    ) -> Iterator[JournalEvent]:
        """Events with seq > `since_seq` (exclusive), oldest first, read in pages so no lock or
        cursor is held while the caller works between items."""
        remaining = limit
        after = since_seq
        while remaining is None or remaining > 0:
            size = page if remaining is None else min(page, remaining)
            where, args = ("seq>?", [after]) if kind is None else ("kind=? AND seq>?", [kind, after])
            rows = self._read(
                f"SELECT seq, kind, payload, created_at FROM events WHERE {where} ORDER BY seq LIMIT ?",
                [*args, size],
            )
            for s, k, p, c in rows:
                yield JournalEvent(s, k, _decode(k, p), c)
            if len(rows) < size:
                return
            after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)

    def recent(self, kind: str, limit: int) -> list[JournalEvent]:
        """The last `limit` events of one kind, newest first (a reverse PK scan, not a full replay)."""
        rows = self._read(
            "SELECT seq, kind, payload, created_at FROM events WHERE kind=? ORDER BY seq DESC LIMIT ?",
            (kind, limit),
        )
        return [JournalEvent(s, k, _decode(k, p), c) for s, k, p, c in rows]

    def pending_after(self, seq: int) -> tuple[int, float | None]:
        """(count, oldest journal time) of events above `seq`: the writer's trigger, a PK range scan."""
        count, oldest = self._read("SELECT COUNT(*), MIN(created_at) FROM events WHERE seq>?", (seq,))[0]
        return int(count), oldest

    def last_seq(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])

    def commit_of(self, seq: int) -> str | None:
        """The Oxen commit that holds the log up to `seq` (that of the last event at or below it), if synced."""
        rows = self._read("SELECT synced_commit FROM events WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (seq,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    def synced_through(self) -> int:
        """The highest seq marked synced (every event at or below it is in Oxen)."""
        rows = self._read("SELECT value FROM meta WHERE key='synced_through'")
        return int(rows[0][0]) if rows else 0

    def stats(self) -> JournalStats:
        by_kind: dict[str, int] = {}
        unsynced_by_kind: dict[str, int] = {}
        for kind, total, unsynced in self._read(
            "SELECT kind, COUNT(*), SUM(synced_commit IS NULL) FROM events GROUP BY kind"
        ):
            by_kind[kind] = int(total)
            if unsynced:
                unsynced_by_kind[kind] = int(unsynced)
        oldest = self._read("SELECT MIN(created_at) FROM events WHERE synced_commit IS NULL")[0][0]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return JournalStats(
            events_total=sum(by_kind.values()),
            unsynced=sum(unsynced_by_kind.values()),
            by_kind=by_kind,
            unsynced_by_kind=unsynced_by_kind,
            file_bytes=size,
            oldest_unsynced_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            last_seq=self.last_seq(),
            synced_through=self.synced_through(),
        )
