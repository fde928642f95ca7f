"""`log status` text: readable before anything exists, and honest about a dead writer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from storage.journal import Journal
from storage.status import log_status
from storage.writer_settings import STATUS_FILE


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
