"""The Oxen writer: journal events become Parquet shards and images in real Oxen commits."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.journal import Journal
from storage.oxen_format import table_schema
from storage.records import (
    ModerationAction,
    RefinementRequest,
    Round,
    RoundPosted,
    UserError,
    new_id,
)
from storage.status import log_status
from storage.writer_process import WriterProcess
from storage.writer_settings import EXIT_OK, WriterSettings


def _expected(journal: Journal) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for event in journal.events():
        rows.setdefault(event.kind, []).append({"seq": event.seq, **event.record.to_dict()})
    return rows


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_once_commits_every_kind_with_images(journal: Journal, settings: WriterSettings, data_dir: Path,
                                             make_round, make_vote, run_once, read_repo):
    """One --once run: a shard per kind with exactly the journal's rows, the round images (and
    mask) in the commit, the journal marked synced, and a message that says what is inside."""
    first, second = make_round(), make_round("a cat, but blue", mask=True, parent_round_id="x",
                                             parent_candidate=2, instruction="make it blue", strength=0.6)
    journal.append(first, RoundPosted(first.round_id, 555, 7, None))
    journal.append(second, RoundPosted(second.round_id, 556, 7, 99))
    journal.append(make_vote(first.round_id, 1, 10), make_vote(first.round_id, 1, 10, "remove"),
                   make_vote(first.round_id, 0, 11))
    journal.append(RefinementRequest(new_id(), first.round_id, 2, 10, "make it blue", "{}", 7, 600),
                   ModerationAction(new_id(), "flag", 1, first.round_id, 10, "test"),
                   UserError(new_id(), 10, 7, "QueueFull", "busy"))
    result = run_once()
    assert result.returncode == EXIT_OK, result.stderr

    status = json.loads(settings.status_path.read_text())
    message = status["last_commit"]["message"]
    assert message == ("refinery: 2 rounds, 2 round messages, 3 votes, 1 refinement, 1 moderation action, "
                       "1 error (events 1-10)")
    assert journal.stats().unsynced == 0
    assert {e.record.kind for e in journal.events()} == {"rounds", "round_messages", "votes", "refinements",
                                                          "moderation", "errors"}
    assert journal._read("SELECT DISTINCT synced_commit FROM events") == [(status["last_commit"]["id"],)]

    rows, repo = read_repo()
    assert rows == _expected(journal)
    for rel in (*first.image_paths, *second.image_paths, second.mask_path):
        assert (settings.repo / rel).read_bytes() == (data_dir / rel).read_bytes()  # restored from HEAD
    shard = settings.repo / "tables" / "rounds" / "000000000001-000000000010.parquet"
    assert pq.read_schema(shard).remove_metadata() == table_schema(Round)
    assert pq.read_schema(shard).field("seeds").type == pa.list_(pa.int64())
    assert [c.message.split("\n")[0] for c in repo.log()] == [message]
    assert repo.log()[0].message.endswith(f"journal {journal.journal_id}")


def test_second_batch_adds_new_shards_and_leaves_old_ones(journal: Journal, settings: WriterSettings,
                                                          make_round, make_vote, run_once, read_repo):
    """Each commit writes new shard files; earlier shards are never rewritten."""
    rnd = make_round()
    journal.append(rnd, *[make_vote(rnd.round_id, 1, u) for u in range(5)])
    assert run_once().returncode == EXIT_OK
    old = {p: _digest(p) for p in (settings.repo / "tables").glob("*/*.parquet")}
    assert sorted(p.name for p in old) == ["000000000001-000000000006.parquet"] * 2
    journal.append(*[make_vote(rnd.round_id, 2, u) for u in range(3)])
    assert run_once().returncode == EXIT_OK

    rows, repo = read_repo()
    assert {p: _digest(p) for p in old} == old  # as restored from the latest commit
    assert sorted(p.name for p in (settings.repo / "tables" / "votes").iterdir()) == [
        "000000000001-000000000006.parquet", "000000000007-000000000009.parquet"]
    assert rows == _expected(journal)
    assert [c.message.split("\n")[0] for c in repo.log()] == [
        "refinery: 3 votes (events 7-9)", "refinery: 1 round, 5 votes (events 1-6)"]


def test_batch_size_splits_commits(journal: Journal, make_vote, run_once, read_repo):
    """No commit holds more than --batch events."""
    journal.append(*[make_vote("r1", 1, u) for u in range(25)])
    assert run_once(batch=10).returncode == EXIT_OK
    rows, repo = read_repo()
    assert [c.message.split("\n")[0] for c in repo.log()] == [
        f"refinery: {n} votes (events {a}-{b})" for n, a, b in ((5, 21, 25), (10, 11, 20), (10, 1, 10))]
    assert [r["seq"] for r in rows["votes"]] == list(range(1, 26))


def test_a_missing_image_does_not_block_the_round(journal: Journal, settings: WriterSettings, data_dir: Path,
                                                  make_round, run_once, read_repo):
    """A round whose image file vanished is still committed; the gap is counted in the status."""
    rnd = make_round()
    (data_dir / rnd.image_paths[0]).unlink()
    journal.append(rnd)
    assert run_once().returncode == EXIT_OK
    assert json.loads(settings.status_path.read_text())["missing_files"] == 1
    rows, _ = read_repo()
    assert [r["round_id"] for r in rows["rounds"]] == [rnd.round_id]
    assert sorted(p.name for p in (settings.repo / "images" / rnd.round_id).iterdir()) == [
        "2.png", "3.png", "4.png"]


def test_writer_process_flushes_restarts_and_stops(journal: Journal, settings: WriterSettings, make_vote,
                                                   wait_for):
    """The bot's handle: flush commits now (the interval alone would wait a minute), a writer that
    dies is restarted, and stop (SIGTERM) exits 0 with nothing pending."""
    writer = WriterProcess(replace(settings, interval_s=60.0))
    writer.start()
    try:
        journal.append(*[make_vote("r1", 1, u) for u in range(3)])
        assert writer.flush(timeout=20)
        assert journal.stats().unsynced == 0
        os.kill(writer.pid, signal.SIGKILL)
        wait_for(lambda: not writer.running, what="the writer to die")
        assert writer.ensure_running()
        journal.append(make_vote("r1", 2, 1))
        assert writer.flush(timeout=20)
        assert journal.stats().unsynced == 0 and writer.restarts == 1
    finally:
        assert writer.stop(timeout=20) == EXIT_OK
    assert json.loads(settings.status_path.read_text())["state"] == "stopped"
    assert not writer.ensure_running()  # stopped on purpose: no restart


def test_a_failing_remote_never_blocks_commits(journal: Journal, settings: WriterSettings, make_vote,
                                               spawn_writer, wait_for):
    """With an unreachable remote the writer still commits; the push failure and the next retry are
    in the status (and in `log status`). The remote side is otherwise untested: no oxen-server here."""
    journal.append(*[make_vote("r1", 1, u) for u in range(4)])
    proc = spawn_writer("--remote", "http://127.0.0.1:9/ns/refinery", "--push-interval", "60",
                        OXEN_AUTH_TOKEN="secret-token")
    wait_for(lambda: journal.stats().unsynced == 0, what="a commit")
    wait_for(lambda: "last_push" in json.loads(settings.status_path.read_text()), what="a push attempt")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == EXIT_OK
    status = json.loads(settings.status_path.read_text())
    assert status["last_push"]["ok"] is False and "Network error" in status["last_push"]["error"]
    assert status["push_failures"] == 1 and status["next_push_at"] > status["last_push"]["time"]
    text = log_status(settings.journal, settings.data_dir)
    assert "push to http://127.0.0.1:9/ns/refinery: FAILED 1 time(s)" in text
    assert "next push in" in text and "secret-token" not in text
    assert "events: 4 total, 0 not yet in Oxen" in text
    assert "refinery: 4 votes (events 1-4)" in text


def test_the_writer_gets_no_secret_it_does_not_use(settings: WriterSettings, monkeypatch) -> None:
    """The writer process's environment has OXEN_AUTH_TOKEN (it pushes) but neither DISCORD_TOKEN nor
    REFINERY_EXPORT_KEY; the export commit's child gets the same allow-list."""
    secrets = {"DISCORD_TOKEN": "discord-secret", "REFINERY_EXPORT_KEY": "export-secret", "AWS_SECRET": "x"}
    for name, value in (secrets | {"OXEN_AUTH_TOKEN": "oxen-token"}).items():
        monkeypatch.setenv(name, value)
    writer = WriterProcess(replace(settings, interval_s=60.0))
    writer.start()
    try:
        assert writer.pid is not None
        raw = Path(f"/proc/{writer.pid}/environ").read_bytes()
        env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    finally:
        writer.stop(timeout=20)
    assert not set(secrets) & set(env), sorted(env)
    assert env["OXEN_AUTH_TOKEN"] == "oxen-token" and "PATH" in env and "PYTHONPATH" in env
    from storage.child_env import child_environment  # here: the assertions above hold the old code to account
    assert not set(secrets) & set(child_environment())
