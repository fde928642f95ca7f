"""Stopping the Oxen writer: whatever was journaled is committed first, within a bounded time."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
from dataclasses import replace

from storage.journal import Journal
from storage.writer_process import WriterProcess
from storage.writer_settings import EXIT_OK, WriterSettings


def test_sigterm_commits_what_is_pending_first(journal: Journal, settings: WriterSettings, make_vote,
                                               spawn_writer, wait_for):
    """A writer told to stop while events wait for their interval (a minute) commits them all
    before exiting 0, in batches, and its status says nothing is pending."""
    proc = spawn_writer("--interval", "60", batch=2)
    wait_for(settings.status_path.exists, what="the writer to start")
    journal.append(*[make_vote("r1", 1, u) for u in range(5)])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == EXIT_OK
    assert journal.stats().unsynced == 0
    status = json.loads(settings.status_path.read_text())
    assert status["state"] == "stopped" and status["pending"] == 0
    assert status["events_committed_session"] == 5


def test_stop_runs_a_writer_that_left_early_once_more(journal: Journal, settings: WriterSettings, make_vote,
                                                      wait_for):
    """A SIGTERM sent to the whole service reaches the writer before the bot's last events; the
    supervisor's stop sees them pending and runs the writer once more to commit them."""
    writer = WriterProcess(replace(settings, interval_s=60.0))
    writer.start()
    wait_for(settings.status_path.exists, what="the writer to start")
    os.kill(writer.pid, signal.SIGTERM)
    wait_for(lambda: not writer.running, what="the writer to exit")
    journal.append(make_vote("r1", 2, 7), make_vote("r1", 3, 8))
    assert writer.stop(timeout=30) == EXIT_OK
    assert journal.stats().unsynced == 0 and writer.pending() == (0, None)


def test_the_supervisor_warns_while_oxen_is_behind(journal: Journal, settings: WriterSettings, make_vote,
                                                   caplog):
    """With events older than the commit interval explains, report_lag warns (count, age, the writer's
    state) once, not at every check, and says when Oxen has caught up."""
    writer = WriterProcess(settings)  # not started: as while it backs off between restarts
    journal.append(*[make_vote("r1", 1, u) for u in range(4)])
    with sqlite3.connect(journal.path) as db:
        db.execute("UPDATE events SET created_at = created_at - 300")
    with caplog.at_level(logging.INFO, logger="refinery.oxen_writer"):
        assert writer.report_lag()[0] == 4
        writer.report_lag()
        journal.mark_synced(journal.last_seq(), "c1")
        assert writer.report_lag() == (0, None)
    lines = [r.getMessage() for r in caplog.records]
    behind = [line for line in lines if line.startswith("Oxen is behind")]
    assert len(behind) == 1 and "4 event(s) not committed, the oldest 300 s old; writer not running" in behind[0]
    assert any(line.startswith("Oxen caught up") for line in lines)
