"""Benchmark: a burst of reactions through AsyncJournal while the Oxen writer drains it.

    python -m bench.votes [--rate 2000] [--seconds 10] [--batch 1000] [--interval 1] [--no-writer]
                          [--baseline-votes 100]

Open loop: appends start at a fixed rate whatever the latency (so slow commits show up as latency
instead of silently lowering the load); --rate 0 runs 64 callers flat out instead. Reports append
latency (p50/p95/p99/max), appends/s, SQLite transactions, the writer's per-commit times, and Oxen
events/s with group commits against one commit per vote on the same repository in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

from storage.async_journal import AsyncJournal
from storage.journal import Journal
from storage.records import VoteEvent, new_id
from storage.writer_process import WriterProcess
from storage.writer_settings import WriterSettings


def _vote(n: int) -> VoteEvent:
    return VoteEvent(new_id(), f"round{n // 500}", n % 5, 10_000 + n % 997, "1\ufe0f\u20e3",
                     "add" if n % 7 else "remove", 123, 456, 789_000 + n // 500)


async def _open_loop(aj: AsyncJournal, rate: float, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def one(n: int) -> None:
        started = loop.time()
        await aj.append(_vote(n))
        latencies.append(loop.time() - started)

    tasks, start, n = [], loop.time(), 0
    while loop.time() - start < seconds:
        due = int((loop.time() - start) * rate)
        while n < due:
            tasks.append(asyncio.ensure_future(one(n)))
            n += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    return latencies


async def _closed_loop(aj: AsyncJournal, callers: int, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    deadline = loop.time() + seconds

    async def caller(c: int) -> None:
        n = c
        while loop.time() < deadline:
            started = loop.time()
            await aj.append(_vote(n))
            latencies.append(loop.time() - started)
            n += callers

    await asyncio.gather(*(caller(c) for c in range(callers)))
    return latencies


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] * 1000


async def main_async(args: argparse.Namespace, data_dir: Path) -> None:
    journal = Journal(data_dir / "journal.sqlite3")
    writer = None
    if not args.no_writer:
        writer = WriterProcess(WriterSettings(journal.path, data_dir / "oxen", data_dir,
                                              interval_s=args.interval, batch=args.batch))
        writer.start()
        time.sleep(1.5)  # let it import and open the repository before the burst
    aj = AsyncJournal(journal)
    seq_before = journal.last_seq()
    started = time.perf_counter()
    if args.rate > 0:
        latencies = await _open_loop(aj, args.rate, args.seconds)
    else:
        latencies = await _closed_loop(aj, 64, args.seconds)
    elapsed = time.perf_counter() - started
    await aj.close()
    print(f"appends: {len(latencies):,} in {elapsed:.2f} s = {len(latencies) / elapsed:,.0f}/s "
          f"({'open loop at ' + str(args.rate) + '/s' if args.rate else '64 callers, closed loop'})")
    print(f"append latency ms: p50 {_pct(latencies, 0.5):.2f}  p95 {_pct(latencies, 0.95):.2f}  "
          f"p99 {_pct(latencies, 0.99):.2f}  max {max(latencies) * 1000:.2f}")
    print(f"sqlite transactions: {journal.transactions:,} "
          f"({len(latencies) / max(1, journal.transactions):.1f} appends per transaction)")
    if writer is not None:
        t = time.perf_counter()
        ok = writer.flush(timeout=300)
        print(f"writer caught up {time.perf_counter() - t:.2f} s after the burst ended (flushed: {ok})")
        writer.stop()
        times = _commit_times(writer)
        if times:
            print(f"oxen commits: {len(times)}, seconds per commit: median {statistics.median(times):.3f}, "
                  f"max {max(times):.3f}, total {sum(times):.2f} (batch up to {args.batch} events)")
            group_rate = (journal.last_seq() - seq_before) / sum(times)
            per_vote_rate = _one_commit_per_vote(journal, data_dir, args.baseline_votes)
            print(f"oxen events/s: group commits {group_rate:,.0f}, one commit per vote (the seed tutorial) "
                  f"{per_vote_rate:,.1f} → group commits are {group_rate / per_vote_rate:,.0f}× cheaper per event")
        lost = journal.last_seq() - journal.synced_through()
        print(f"events journaled: {journal.last_seq():,}, not in Oxen: {lost} "
              f"({'zero lost' if lost == 0 else 'LOST EVENTS'})")
    journal.close()


def _commit_times(writer: WriterProcess) -> list[float]:
    return [float(s) for s in re.findall(r"\(events \d+-\d+\) in ([0-9.]+)s", writer.log_path.read_text())]


def _one_commit_per_vote(journal: Journal, data_dir: Path, votes: int) -> float:
    """The baseline, on the same repository: a writer with batch=1 commits each vote on its own."""
    writer = WriterProcess(WriterSettings(journal.path, data_dir / "oxen", data_dir, interval_s=0.01, batch=1))
    before = len(_commit_times(writer))
    writer.start()
    seqs = journal.append(*(_vote(10_000_000 + n) for n in range(votes)))
    events = sum(1 for seq in seqs if seq > 0)  # a remove of a vote nobody cast is not an event
    writer.flush(timeout=600)
    writer.stop()
    times = _commit_times(writer)[before:]
    assert len(times) == events, f"expected {events} one-vote commits, saw {len(times)}"
    return events / sum(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--no-writer", action="store_true")
    p.add_argument("--baseline-votes", type=int, default=100, help="votes committed one per commit")
    p.add_argument("--data-dir", type=Path)
    args = p.parse_args()
    if args.data_dir:
        asyncio.run(main_async(args, args.data_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="refinery-bench-") as tmp:
            asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()
