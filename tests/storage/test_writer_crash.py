"""Crash safety: whatever moment the writer dies at, every journaled event reaches Oxen exactly once."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.journal import Journal
from storage.writer_settings import EXIT_CONFIG, EXIT_OK, EXIT_RETRY, WriterSettings

_RANGE = re.compile(r"\(events (\d+)-(\d+)\)")


def _assert_exactly_once(journal: Journal, read_repo) -> list[tuple[int, int]]:
    """Every journaled event is in the latest commit once; commits cover disjoint, adjacent ranges;
    the journal is marked synced throughout. Returns the commits' ranges, oldest first."""
    rows, repo = read_repo()
    committed = [r["seq"] for kind_rows in rows.values() for r in kind_rows]
    assert len(committed) == len(set(committed)), "an event was committed twice"
    journaled = {e.seq: e.record for e in journal.events()}
    assert sorted(committed) == sorted(journaled)
    for kind_rows in rows.values():
        for row in kind_rows:
            assert journaled[row["seq"]].to_dict() == {k: v for k, v in row.items() if k != "seq"}
    ranges = [tuple(map(int, _RANGE.search(c.message).groups())) for c in reversed(repo.log())]
    assert ranges[0][0] == 1 and all(b + 1 == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert ranges[-1][1] == max(journaled)
    assert journal.stats().unsynced == 0 and journal.synced_through() == max(journaled)
    shards = {p.name for p in (repo.path / "tables").glob("*/*.parquet")}
    assert shards == {f"{a:012d}-{b:012d}.parquet" for a, b in ranges} & shards  # names match commits
    return ranges


def _fill(journal: Journal, make_round, make_vote, rounds: int, votes_per_round: int) -> None:
    for _ in range(rounds):
        rnd = make_round()
        journal.append(rnd)
        for u in range(votes_per_round):
            journal.append(make_vote(rnd.round_id, u % 5, u))


def _kill_at(point: str, spawn_writer, data_dir: Path, wait_for, batch: int) -> None:
    proc = spawn_writer("--once", batch=batch, pause_at=point)
    marker = data_dir / f"writer-paused-{point}"
    wait_for(marker.exists, what=f"the writer to reach {point}")
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait()
    marker.unlink()


@pytest.mark.parametrize("point", ["after_write", "after_add"])
def test_killed_before_commit_leaves_no_duplicate(point, journal: Journal, settings: WriterSettings,
                                                  make_round, make_vote, spawn_writer, run_once, wait_for,
                                                  read_repo):
    """Killed with shards written (or staged) for events 1-5, restarted with a bigger batch: the
    leftovers of 1-5 are unstaged and deleted, so 1-5 are not committed twice inside 1-12."""
    _fill(journal, make_round, make_vote, rounds=2, votes_per_round=5)
    _kill_at(point, spawn_writer, settings.data_dir, wait_for, batch=5)
    leftover = settings.repo / "tables" / "votes" / "000000000001-000000000005.parquet"
    assert leftover.exists()
    assert journal.synced_through() == 0
    result = run_once(batch=100)
    assert result.returncode == EXIT_OK, result.stderr
    assert not leftover.exists()
    assert _assert_exactly_once(journal, read_repo) == [(1, 12)]


def test_killed_after_commit_is_marked_not_recommitted(journal: Journal, settings: WriterSettings,
                                                       make_round, make_vote, spawn_writer, run_once,
                                                       wait_for, read_repo):
    """Killed after Oxen committed events 1-10 but before the journal heard: the restart marks them
    synced from the repository's own history instead of committing them again."""
    _fill(journal, make_round, make_vote, rounds=3, votes_per_round=9)
    _kill_at("after_commit", spawn_writer, settings.data_dir, wait_for, batch=10)
    assert journal.synced_through() == 0 and journal.stats().unsynced == 30
    result = run_once(batch=10)
    assert result.returncode == EXIT_OK, result.stderr
    assert "not marked synced: marking" in result.stderr
    assert _assert_exactly_once(journal, read_repo) == [(1, 10), (11, 20), (21, 30)]
    first_commit = read_repo()[1].log()[-1].id
    assert journal._read("SELECT DISTINCT synced_commit FROM events WHERE seq <= 10") == [(first_commit,)]


def test_random_kills_while_events_keep_arriving(journal: Journal, settings: WriterSettings, make_round,
                                                 make_vote, spawn_writer, run_once, read_repo):
    """SIGKILL at random moments (start-up, recovery, writing, adding, committing) while the bot
    keeps journaling; after a final run every event is in Oxen exactly once."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    _fill(journal, make_round, make_vote, rounds=4, votes_per_round=12)
    for _ in range(4):
        proc = spawn_writer(batch=7)
        deadline = time.monotonic() + rng.uniform(0.3, 1.2)
        while time.monotonic() < deadline:
            _fill(journal, make_round, make_vote, rounds=1, votes_per_round=rng.randrange(1, 6))
            time.sleep(0.15)
        proc.kill()
        proc.wait()
    result = run_once(batch=7)
    assert result.returncode == EXIT_OK, f"seed {seed}: {result.stderr}"
    ranges = _assert_exactly_once(journal, read_repo)
    assert len(ranges) > 1, f"seed {seed}"


def test_a_stranger_journal_is_refused_and_a_fresh_one_adopted(journal: Journal, settings: WriterSettings,
                                                               make_vote, run_once, read_repo):
    """Seqs 1-5 of another journal must not be taken for the repository's 1-5: the writer refuses
    (exit 78, said in the status). A fresh journal is adopted and numbers its events above 5."""
    journal.append(*[make_vote("r1", 1, u) for u in range(5)])
    assert run_once().returncode == EXIT_OK
    journal.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.journal}{suffix}").unlink(missing_ok=True)
    stranger = Journal(settings.journal)
    stranger.append(make_vote("r2", 1, 1))
    result = run_once()
    assert result.returncode == EXIT_CONFIG
    assert "is not the journal that wrote" in json.loads(settings.status_path.read_text())["last_error"]["message"]
    stranger.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.journal}{suffix}").unlink(missing_ok=True)
    fresh = Journal(settings.journal)
    assert run_once().returncode == EXIT_OK  # adopts it: nothing to commit yet
    assert fresh.append(make_vote("r3", 1, 1), make_vote("r3", 2, 1)) == [6, 7]
    assert run_once().returncode == EXIT_OK
    rows, repo = read_repo()
    assert [r["seq"] for r in rows["votes"]] == [1, 2, 3, 4, 5, 6, 7]
    assert repo.log()[0].message.endswith(f"journal {fresh.journal_id}")
    fresh.close()


def test_a_wiped_repository_is_rebuilt_from_the_journal(journal: Journal, settings: WriterSettings,
                                                        make_round, make_vote, run_once, read_repo):
    """If the repository is lost, the journal still has everything: it is all committed again."""
    _fill(journal, make_round, make_vote, rounds=2, votes_per_round=3)
    assert run_once().returncode == EXIT_OK
    shutil.rmtree(settings.repo)
    result = run_once()
    assert result.returncode == EXIT_OK, result.stderr
    assert "re-committing" in result.stderr
    assert _assert_exactly_once(journal, read_repo) == [(1, 8)]


def test_a_held_repository_is_retried_once_in_a_fresh_process(journal: Journal, settings: WriterSettings,
                                                               make_vote, run_once):
    """When the repository cannot be opened the writer re-execs itself once, then exits 75 so its
    supervisor restarts it later; it never hangs or commits."""
    journal.append(make_vote("r1", 1, 1))
    code = (f"import time; from storage.oxen_repo import OxenRepository; "
            f"OxenRepository({str(settings.repo)!r}).open_or_init(); print('holding', flush=True); "
            f"time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        result = run_once()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode == EXIT_RETRY
    assert result.stderr.count("retrying once in a fresh process") == 1
    assert journal.stats().unsynced == 1
