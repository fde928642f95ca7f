"""AsyncJournal: durable appends from the event loop, grouped into few transactions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from storage.async_journal import AsyncJournal
from storage.journal import Journal, JournalClosedError
from storage.records import Round, RoundPosted, VoteEvent


async def test_concurrent_appends_are_all_durable_and_grouped(data_dir, make_vote: Callable[..., VoteEvent]):
    """1,000 concurrent appends all return distinct seqs, survive a reopen, and share transactions."""
    journal = Journal(data_dir / "journal.sqlite3")
    aj = AsyncJournal(journal)
    votes = [make_vote("r1", 1 + n % 4, n) for n in range(1000)]
    results = await asyncio.gather(*(aj.append(v) for v in votes))
    await aj.close()
    seqs = [r[0] for r in results]
    assert sorted(seqs) == list(range(1, 1001))
    assert journal.transactions < 1000  # group commit: callers waiting together shared a COMMIT
    journal.close()
    reopened = Journal(data_dir / "journal.sqlite3")
    by_seq = {e.seq: e.record for e in reopened.events()}
    assert all(by_seq[seq] == vote for seq, vote in zip(seqs, votes, strict=True))
    assert sum(len(users) for users in reopened.vote_state("r1").values()) == 1000
    reopened.close()


async def test_reads_see_earlier_appends(journal: Journal, make_round: Callable[..., Round],
                                         make_vote: Callable[..., VoteEvent]):
    """Reads run after the appends queued before them, so a caller reads its own writes."""
    aj = AsyncJournal(journal)
    rnd = make_round()
    append = asyncio.ensure_future(aj.append(rnd, RoundPosted(rnd.round_id, 555, 7, None)))
    vote = asyncio.ensure_future(aj.append(make_vote(rnd.round_id, 2, 9)))
    found, message, state, has = await asyncio.gather(
        aj.round_for_message(555), aj.message_for_round(rnd.round_id), aj.vote_state(rnd.round_id),
        aj.has_vote(rnd.round_id, 2, 9))
    assert (await append) == [1, 2] and (await vote) == [3]
    assert (found, message, state, has) == (rnd, 555, {2: {9}}, True)
    assert (await aj.round(rnd.round_id)) == rnd
    assert (await aj.stats()).events_total == 3
    await aj.close()


async def test_a_bad_record_fails_only_its_caller(journal: Journal, make_vote: Callable[..., VoteEvent]):
    """Validation happens per caller, so one bad vote never fails the group it would have joined."""
    aj = AsyncJournal(journal)
    good = [aj.append(make_vote("r1", 1, n)) for n in range(5)]
    with pytest.raises(ValueError, match="'maybe'"):
        await aj.append(make_vote("r1", 1, 99, "maybe"))
    assert len(await asyncio.gather(*good)) == 5
    await aj.close()
    assert journal.last_seq() == 5


async def test_close_drains_then_refuses(journal: Journal, make_vote: Callable[..., VoteEvent]):
    """Appends queued before close are committed; appends after it are refused."""
    aj = AsyncJournal(journal)
    pending = [asyncio.ensure_future(aj.append(make_vote("r1", 1, n))) for n in range(50)]
    await asyncio.sleep(0)  # let every append reach the queue
    await aj.close()
    assert len(await asyncio.gather(*pending)) == 50
    assert journal.last_seq() == 50
    with pytest.raises(JournalClosedError):
        await aj.append(make_vote("r1", 1, 1))


async def test_append_latency_stays_low_under_concurrency(journal: Journal,
                                                          make_vote: Callable[..., VoteEvent]):
    """A sanity bound (the benchmark measures properly): 20 callers x 50 appends, p99 well under 200 ms."""
    aj = AsyncJournal(journal)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def caller(user: int) -> None:
        for n in range(50):
            started = loop.time()
            await aj.append(make_vote("r1", n % 4 + 1, user))
            latencies.append(loop.time() - started)

    await asyncio.gather(*(caller(u) for u in range(20)))
    await aj.close()
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99)] < 0.2
