"""`log status` text: readable before anything exists, and honest about a dead writer."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from storage.journal import Journal
from storage.status import log_status
from storage.writer_settings import STATUS_FILE, WriterSettings


def test_before_anything_ran(data_dir: Path):
    """No journal and no writer status yet: say so, and create nothing."""
    text = log_status(data_dir / "journal.sqlite3", data_dir)
    assert "does not exist yet" in text and "no status yet" in text
    assert not (data_dir / "journal.sqlite3").exists()


def test_reports_unsynced_events_and_a_dead_writer(journal: Journal, data_dir: Path, make_vote):
    """Unsynced counts by kind and their age; a 'running' status whose pid is gone is not trusted."""
    journal.append(*[make_vote("r1", 1, u) for u in range(3)])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    (data_dir / STATUS_FILE).write_text(json.dumps({
        "state": "running", "pid": dead.pid, "updated_at": now, "repo": "data/oxen",
        "committed_through_seq": 0, "remote": None,
        "last_error": {"time": now, "message": "oxen commit failed: disk full"}}))
    text = log_status(journal.path, data_dir)
    assert "events: 3 total, 3 not yet in Oxen" in text
    assert "oldest unsynced event" in text
    assert "votes                   3 total       3 unsynced" in text
    assert "Oxen writer: not running (last said 'running')" in text
    assert "disk full" in text and "push: no remote configured" in text


def _age_events(journal: Journal, seconds: float) -> None:
    with sqlite3.connect(journal.path) as db:
        db.execute("UPDATE events SET created_at = created_at - ?", (seconds,))


def test_reports_the_writer_lag(journal: Journal, data_dir: Path, make_vote):
    """Events waiting longer than the commit interval explains read as BEHIND, with their count and
    the oldest one's age; once committed there is no lag."""
    journal.append(*[make_vote("r1", 1, u) for u in range(3)])
    assert "Oxen lag: normal: 3 event(s) not in Oxen yet" in log_status(journal.path, data_dir, interval_s=10)
    _age_events(journal, 600)
    text = log_status(journal.path, data_dir, interval_s=10)
    assert ("Oxen lag: BEHIND: 3 event(s) not in Oxen yet, the oldest 10.0 min old "
            "(commits are due every 10.0 s)") in text
    journal.mark_synced(journal.last_seq(), "c1")
    assert "Oxen lag: none" in log_status(journal.path, data_dir)


def test_a_writer_that_ran_is_never_called_never_run(journal: Journal, settings: WriterSettings, make_vote,
                                                     run_once, tmp_path: Path):
    """The journal says a writer committed: a missing status file does not make it 'never run'. A data
    directory nothing ran in is named in full, with where to look instead."""
    journal.append(make_vote("r1", 1, 1))
    assert run_once().returncode == 0
    settings.status_path.unlink()
    text = log_status(journal.path, settings.data_dir)
    assert "never run" not in text and "a writer has run here" in text and "through seq 1 are in Oxen" in text
    elsewhere = tmp_path / "elsewhere"
    text = log_status(elsewhere / "journal.sqlite3", elsewhere)
    assert "never run" not in text and str(elsewhere / STATUS_FILE) in text and "--config" in text
