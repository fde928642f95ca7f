"""`AsyncJournal`: the `Journal` on the asyncio loop, with group commit on its own thread.

One dedicated thread owns the wrapped journal; every append queued while the previous transaction
ran is committed with the others as ONE transaction, so many concurrent callers share one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from storage.journal import Journal, JournalClosedError, JournalEvent, JournalStats, validate_record
from storage.records import Record, Round, RoundPosted, VoteEvent

T = TypeVar("T")


@dataclass
class _Append:
    records: tuple[Record, ...]
    future: asyncio.Future[list[int]]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class EventLog(Protocol):
    """What the conversation core needs of the journal: durable appends and the query tables. The bot
    uses `AsyncJournal` (SQLite); the core's unit tests use an in-memory fake (tests/helpers.py)."""

    async def append(self, *records: Record) -> list[int]:
        """Journal `records` durably; their seqs (0 for a vote event that changes nothing)."""
        ...

    async def append_vote(self, vote: VoteEvent) -> bool:
        """Journal a vote event if it changes the vote state; True if it did."""
        ...

    async def round(self, round_id: str) -> Round | None: ...

    async def round_for_message(self, message_id: int) -> Round | None: ...

    async def message_for_round(self, round_id: str) -> int | None: ...

    async def vote_state(self, round_id: str) -> dict[int, set[int]]:
        """candidate → the users whose vote for it stands."""
        ...

    async def posted_since(self, since: float) -> list[RoundPosted]:
        """Round messages posted at or after `since` (epoch seconds), oldest first."""
        ...

    async def has_vote(self, round_id: str, candidate: int, user_id: int) -> bool: ...

    async def stats(self) -> JournalStats: ...

    async def events(self, kind: str) -> list[JournalEvent]:
        """Every event of one kind, oldest first."""
        ...

    async def recent(self, kind: str, limit: int) -> list[JournalEvent]:
        """The last `limit` events of one kind, newest first."""
        ...

    async def close(self) -> None: ...


def _wake(loop: asyncio.AbstractEventLoop, pairs: list[tuple[asyncio.Future[Any], Any, Any]]) -> None:
    # A closed loop raises RuntimeError: nobody is waiting there any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, pairs)


def _settle(pairs: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in pairs:
        if future.cancelled():
            continue  # the caller gave up waiting; the append itself still happened (or failed)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


class AsyncJournal:
    """A `Journal` for the asyncio loop: one dedicated thread owns it and commits every append queued
    while the previous transaction ran as ONE transaction (group commit), so many concurrent callers
    share one fsync. `await append(...)` returns only once the append is durable. Reads go through the
    same thread in queue order, so a read after an append sees it. `close()` drains the queue; the
    wrapped Journal stays open (its owner closes it)."""

    def __init__(self, journal: Journal, *, max_group: int = 2000) -> None:
        self.journal = journal
        self._max_group = max_group
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    async def append(self, *records: Record) -> list[int]:
        if self._closed:
            raise JournalClosedError("async journal is closed")
        for record in records:
            validate_record(record)  # a bad record fails its caller now, not the whole group later
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._queue.put(_Append(records, future, loop))
        return await future

    async def append_vote(self, vote: VoteEvent) -> bool:
        """Journal a vote event if it changes the vote state; True if it did (and is now durable)."""
        return (await self.append(vote))[0] > 0

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise JournalClosedError("async journal is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Call(fn, future, loop))
        return await future

    async def round(self, round_id: str) -> Round | None:
        return await self._call(lambda: self.journal.round(round_id))

    async def round_for_message(self, message_id: int) -> Round | None:
        return await self._call(lambda: self.journal.round_for_message(message_id))

    async def message_for_round(self, round_id: str) -> int | None:
        return await self._call(lambda: self.journal.message_for_round(round_id))

    async def vote_state(self, round_id: str) -> dict[int, set[int]]:
        return await self._call(lambda: self.journal.vote_state(round_id))

    async def posted_since(self, since: float) -> list[RoundPosted]:
        return await self._call(lambda: self.journal.posted_since(since))

    async def has_vote(self, round_id: str, candidate: int, user_id: int) -> bool:
        return await self._call(lambda: self.journal.has_vote(round_id, candidate, user_id))

    async def stats(self) -> JournalStats:
        return await self._call(self.journal.stats)

    async def events(self, kind: str) -> list[JournalEvent]:
        """Every event of one kind, oldest first (for a start-up replay of a small kind)."""
        return await self._call(lambda: list(self.journal.events(kind=kind)))

    async def recent(self, kind: str, limit: int) -> list[JournalEvent]:
        return await self._call(lambda: self.journal.recent(kind, limit))

    async def close(self) -> None:
        """Stop accepting work, finish everything queued, and stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    # -- the writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            # Everything queued while the last transaction was committing joins this one.
            while len(items) < self._max_group:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            group: list[_Append] = []
            for item in items:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Append):
                    group.append(item)
                else:
                    self._commit(group)  # keep queue order: a read sees the appends before it
                    group = []
                    self._execute(item)
            self._commit(group)

    def _commit(self, group: list[_Append]) -> None:
        if not group:
            return
        try:
            seqs = self.journal.append_groups([a.records for a in group])
            results: list[tuple[Any, BaseException | None]] = [(s, None) for s in seqs]
        except Exception as error:  # nothing in the group is durable: every caller hears so
            results = [(None, error)] * len(group)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
        for item, (value, error) in zip(group, results, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, value, error))
        for loop, pairs in by_loop.items():
            # One wake-up per loop per group rather than one per caller.
            _wake(loop, pairs)

    @staticmethod
    def _execute(item: _Call) -> None:
        try:
            pair = (item.future, item.fn(), None)
        except Exception as error:
            pair = (item.future, None, error)
        _wake(item.loop, [pair])
