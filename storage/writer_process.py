"""The bot's side of the Oxen writer: `WriterProcess` runs `python -m storage.oxen_writer` as a child
process, restarts it when it dies, asks it to flush, and stops it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from storage.child_env import child_environment
from storage.journal import Journal
from storage.writer_settings import EXIT_CONFIG, FLUSH_FILE, WriterSettings, lag_threshold_s

log = logging.getLogger("refinery.oxen_writer")
_LAG_REPEAT_S = 60.0  # while Oxen is behind, the warning is repeated this often
_KILL_AFTER_S = 5.0  # past its flush budget, a writer that has not exited is killed (crash-safe anyway)


class WriterProcess:
    """Runs the writer as a child process for the bot: `start`, `flush`, `stop`, `ensure_running`.

    The child gets its own session (a Ctrl-C meant for the bot must not kill it mid-batch) and is
    told the bot's pid, so it exits by itself if the bot dies. Its stdout (Oxen prints a line per
    add and commit) and stderr go to `log_path`. Methods are blocking: call them from a thread
    (`asyncio.to_thread`) on the event loop.
    """

    def __init__(self, settings: WriterSettings, *, log_path: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log_path or settings.data_dir / "oxen-writer.log"
        self.restarts = 0
        self.last_exit: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._next_start = 0.0
        self._stopping = False
        self._behind_since: float | None = None  # Oxen lagging the journal (report_lag), since when
        self._lag_warned_at = 0.0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self, *, once: bool = False) -> None:
        if self.running:
            return
        self._stopping = False
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings = replace(self.settings, once=once, parent_pid=os.getpid())
        root = str(Path(__file__).resolve().parent.parent)  # so `-m storage.oxen_writer` resolves
        env = child_environment()  # no DISCORD_TOKEN, no REFINERY_EXPORT_KEY (nor REEXEC_ENV)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", "storage.oxen_writer", *settings.to_argv()],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True)
        self._started_at = time.monotonic()
        log.info("oxen writer started, pid %d", self._proc.pid)

    def ensure_running(self) -> bool:
        """Restart the writer if it died unexpectedly; True if it was (re)started. Quick repeated
        deaths back off (at once, then 1 s doubling to 60 s); a configuration error is not retried."""
        if self._stopping or self.running:
            return False
        if self._proc is not None:
            self.last_exit = self._proc.returncode
            self._proc = None
            if self.last_exit == EXIT_CONFIG:
                log.error("oxen writer refused to start (configuration); see %s", self.settings.status_path)
            quick = time.monotonic() - self._started_at < 60
            self.restarts = self.restarts + 1 if quick else 1
            delay = 0.0 if self.restarts == 1 else min(60.0, 2.0 ** (self.restarts - 2))
            self._next_start = time.monotonic() + delay
            log.warning("oxen writer exited with %s; restarting", self.last_exit)
        if self.last_exit == EXIT_CONFIG or time.monotonic() < self._next_start:
            return False
        self.start()
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Ask for a commit now; True once everything journaled before the call is in Oxen."""
        journal = Journal(self.settings.journal)
        try:
            target, deadline, asked = journal.last_seq(), time.monotonic() + timeout, 0.0
            while journal.synced_through() < target:
                if time.monotonic() > deadline:
                    return False
                self.ensure_running()
                if time.monotonic() - asked > 1.0:  # re-ask: a restarted writer never saw the first
                    (self.settings.data_dir / FLUSH_FILE).touch()
                    asked = time.monotonic()
                time.sleep(0.05)
            return True
        finally:
            journal.close()

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the writer once it has committed everything journaled: SIGTERM (it commits what is
        pending, for at most `stop_flush_s`, then exits 0), SIGKILL if it is still there 5 s past
        `timeout` (default `stop_flush_s`). A writer already gone while events wait (a SIGTERM sent to
        the whole service reached it before the bot's last events) is run once more to commit them."""
        self._stopping = True
        budget = self.settings.stop_flush_s if timeout is None else timeout
        deadline = time.monotonic() + budget
        pending = self.pending()[0]
        again = not self.running and pending > 0 and budget > 0 and self.last_exit != EXIT_CONFIG
        if again:
            self.start(once=True)  # --once: commits what is journaled now, then exits by itself
            self._stopping = True
        if self._proc is None:
            return self.last_exit
        log.info("oxen writer: stopping with %d event(s) to commit (at most %.0f s)", pending, budget)
        if self._proc.poll() is None:
            if not again:
                self._proc.terminate()
            try:
                self._proc.wait(max(0.0, deadline - time.monotonic()) + _KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self.last_exit = self._proc.returncode
        self._proc = None
        left = self.pending()[0]
        (log.warning if left else log.info)("oxen writer stopped (exit %s), %d event(s) not yet in Oxen",
                                            self.last_exit, left)
        return self.last_exit

    def report_lag(self) -> tuple[int, float | None]:
        """Warn while Oxen lags the journal more than the commit interval explains (a writer dead or
        backing off between restarts, failing commits): when it starts and every minute while it
        lasts, then one line once it has caught up. Returns `pending()`."""
        count, age = self.pending()
        now = time.monotonic()
        if age is not None and age > lag_threshold_s(self.settings.interval_s):
            if self._behind_since is None or now - self._lag_warned_at >= _LAG_REPEAT_S:
                state = "running" if self.running else f"not running (last exit {self.last_exit})"
                log.warning("Oxen is behind: %d event(s) not committed, the oldest %.0f s old; writer %s, "
                            "%d quick restart(s)", count, age, state, self.restarts)
                self._lag_warned_at = now
            self._behind_since = self._behind_since or now
        elif self._behind_since is not None:
            log.info("Oxen caught up with the journal (was behind for %.0f s)", now - self._behind_since)
            self._behind_since = None
        return count, age

    def pending(self) -> tuple[int, float | None]:
        """(events journaled but not yet in Oxen, age in seconds of the oldest of them)."""
        if not self.settings.journal.exists():
            return 0, None
        journal = Journal(self.settings.journal)
        try:
            count, oldest = journal.pending_after(journal.synced_through())
        finally:
            journal.close()
        return count, None if oldest is None else max(0.0, time.time() - oldest)
