"""The Oxen writer: the ONE process that owns the Oxen repository and drains the journal into it.

    python -m storage.oxen_writer --journal data/journal.sqlite3 --repo data/oxen --data-dir data \\
        [--interval 5] [--batch 500] [--once] [--remote URL --push-interval 300]

Each group commit takes the next events after the repository's high-water mark (up to --batch of
them, once --batch are waiting or the oldest has waited --interval seconds, or on a flush request),
writes one new Parquet shard per kind, `tables/<kind>/<first>-<last>.parquet` (the batch's seq range,
zero-padded to 12 digits), copies each round's images to the same relative path, adds exactly those
files, commits, and only then marks the events synced in the journal.

Exactly once across crashes:
- The high-water mark comes from Oxen, never from the journal: the newest commit whose first line
  reads "refinery: ... (events A-B)". Events above B are pending whatever the journal says, so a
  death between `commit` and `mark_synced` is repaired on start by marking them synced, not by
  committing them again. (Seqs become visible in commit order: SQLite has one writer at a time
  and AUTOINCREMENT never hands out a seq below a committed one, so "above B" misses nothing.)
- A killed batch can leave shards (and staged entries) behind; a restarted batch may cover another
  range. So start-up unstages everything staged and deletes every shard whose last seq is above the
  high-water mark; and a batch only ever adds the files it wrote, never a whole folder.
- Every commit names the journal it came from ("journal <id>"); a different journal may only be
  adopted if it holds no seq the repository already has (new seqs are then numbered above it).

Trained adapters asked for by `refinery train` (request files, see storage.model_branches) are
committed between group commits, each on its own branch `models/<name>`; the writer then returns to
the main branch, and a writer that died on a model branch returns to it on start.

`WriterSettings`, the exit codes and the status and flush files are in storage.writer_settings; the
shard schema and commit message in storage.oxen_format; the bot's supervisor in
storage.writer_process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import filelock

from storage import model_branches
from storage.journal import Journal, JournalEvent
from storage.oxen_format import commit_message, write_shard
from storage.oxen_repo import OxenError, OxenRepository
from storage.records import Round
from storage.writer_settings import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RETRY,
    FLUSH_FILE,
    REEXEC_ENV,
    WriterSettings,
    writer_lock_path,
)

log = logging.getLogger("refinery.oxen_writer")

_RANGE = re.compile(r"^refinery: .*\(events (\d+)-(\d+)\)$")  # a commit's first line
_JOURNAL_LINE = re.compile(r"^journal ([0-9a-f]+)$", re.MULTILINE)
_SHARD = re.compile(r"^(\d{12})-(\d{12})\.parquet$")
_NOT_IMAGES = ("tables", ".oxen", "models")  # the writer's own folders: a round's file never goes there


class WriterConfigError(Exception):
    """The journal and the repository do not belong together; restarting will not help."""


def reached(point: str, data_dir: Path) -> None:
    """A named step of a group commit ("after_write", "after_add", "after_commit"). Does nothing here;
    the crash tests run the writer with this replaced (tests/paused_writer.py) to SIGKILL it exactly there."""


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


# -- the writer -------------------------------------------------------------------------------------
class OxenWriter:
    def __init__(self, settings: WriterSettings, journal: Journal, repo: OxenRepository) -> None:
        self.settings, self.journal, self.repo = settings, journal, repo
        self.hwm = 0
        self.status: dict[str, Any] = {"pid": os.getpid(), "repo": str(repo.path), "remote": settings.remote,
                                       "started_at": time.time(), "events_committed_session": 0,
                                       "missing_files": 0, "push_failures": 0}
        self._next_push_at = 0.0
        self._pushed_through = -1
        self._remote_ready = False
        self._unpushed_branches: set[str] = set()  # model branches still to push (remote configured)

    def write_status(self, state: str, **changes: Any) -> None:
        self.status.update(changes, state=state, updated_at=time.time(), committed_through_seq=self.hwm)
        with contextlib.suppress(OSError):  # status is advisory: never let it stop a commit
            write_json_atomic(self.settings.status_path, self.status)

    def high_water_mark(self) -> tuple[int, str | None, str | None]:
        """(last committed seq, its commit id, its journal id) from the newest refinery commit."""
        for commit in self.repo.log():
            first_line = commit.message.split("\n", 1)[0]
            if m := _RANGE.search(first_line):
                journal = _JOURNAL_LINE.search(commit.message)
                return int(m[2]), commit.id, journal[1] if journal else None
        return 0, None, None

    def recover(self) -> None:
        """Bring journal, staging area and working tree in line with the repository's history."""
        branch = self.repo.current_branch()
        if branch and branch.startswith(model_branches.BRANCH_PREFIX):  # died mid-commit of a model
            log.warning("repository was left on %s: back to %s", branch, model_branches.MAIN_BRANCH)
            model_branches.return_to(self.repo, model_branches.MAIN_BRANCH)
        hwm, commit_id, journal_id = self.high_water_mark()
        self.hwm = hwm
        if journal_id is not None and journal_id != self.journal.journal_id:
            if not self.journal.reserve_seqs_through(hwm, only_if_fresh=True):
                raise WriterConfigError(
                    f"journal {self.journal.path} (id {self.journal.journal_id}) is not the journal that "
                    f"wrote repository {self.repo.path} (id {journal_id}, events up to {hwm}) and already "
                    f"holds seqs at or below {hwm}: restore the right journal or use a fresh repository")
        else:  # same journal: if it lost its tail (old backup), new seqs must still go above hwm
            self.journal.reserve_seqs_through(hwm, only_if_fresh=False)
        synced = self.journal.synced_through()
        if synced < hwm and commit_id is not None:
            log.info("events to %d are in oxen commit %s but not marked synced: marking", hwm, commit_id)
            self.journal.mark_synced(hwm, commit_id)
        elif synced > hwm:
            log.warning("repository has events to %d, journal says %d synced: re-committing", hwm, synced)
            self.journal.mark_unsynced_after(hwm)
        for path in self.repo.status().staged:  # left by a killed add/commit; unstage before deleting
            self.repo.unstage(path)
        for shard in (self.repo.path / "tables").glob("*/*.parquet"):
            if (m := _SHARD.match(shard.name)) and int(m[2]) > hwm:
                log.info("removing uncommitted shard %s", shard.relative_to(self.repo.path))
                shard.unlink()

    def _copy_files(self, record: Round) -> list[Path]:
        copied = []
        for rel in (*record.image_paths, *([record.mask_path] if record.mask_path else [])):
            part = PurePosixPath(rel)
            src, dst = self.settings.data_dir / part, self.repo.path / part
            if not part.parts or part.is_absolute() or ".." in part.parts or part.parts[0] in _NOT_IMAGES:
                log.warning("round %s: refusing file path %r", record.round_id, rel)
                self.status["missing_files"] += 1
            elif not src.is_file():
                log.warning("round %s: %s is missing; committing the round without it", record.round_id, src)
                self.status["missing_files"] += 1
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                stamp = lambda p: (p.stat().st_size, p.stat().st_mtime_ns)  # noqa: E731
                if src.resolve() != dst.resolve() and not (dst.exists() and stamp(dst) == stamp(src)):
                    shutil.copy2(src, dst)  # keeps mtime, so an identical re-copy is skipped next time
                copied.append(dst)
        return copied

    def commit_batch(self) -> bool:
        """One group commit of the next events above the high-water mark; False if none."""
        events = list(self.journal.events(since_seq=self.hwm, limit=self.settings.batch))
        if not events:
            return False
        started = time.monotonic()
        first, last = events[0].seq, events[-1].seq
        by_kind: dict[str, list[JournalEvent]] = {}
        for event in events:
            by_kind.setdefault(event.kind, []).append(event)
        paths = []
        for kind, group in by_kind.items():
            paths.append(self.repo.path / "tables" / kind / f"{first:012d}-{last:012d}.parquet")
            write_shard(paths[-1], group)
        for event in by_kind.get(Round.kind, []):
            assert isinstance(event.record, Round)
            paths += self._copy_files(event.record)
        reached("after_write", self.settings.data_dir)
        for path in paths:  # exactly these files: leftovers elsewhere must never ride along
            self.repo.add(path)
        reached("after_add", self.settings.data_dir)
        counts = {k: len(v) for k, v in by_kind.items()}
        message = commit_message(first, last, counts, self.journal.journal_id)
        commit_id = self.repo.commit(message)
        reached("after_commit", self.settings.data_dir)
        self.journal.mark_synced(last, commit_id)
        self.hwm = last
        seconds = time.monotonic() - started
        log.info("commit %s: %s in %.3fs", commit_id, message.split("\n")[0], seconds)
        self.write_status("running", last_commit={
            "id": commit_id, "time": time.time(), "message": message.split("\n")[0], "first_seq": first,
            "last_seq": last, "events": len(events), "files": len(paths), "seconds": round(seconds, 4)},
            events_committed_session=self.status["events_committed_session"] + len(events), last_error=None)
        return True

    def maybe_push(self, force: bool = False) -> None:
        """Push on schedule; a failure only moves the next try out (exponential backoff)."""
        remote = self.settings.remote
        now = time.time()
        main_due = self.hwm > 0 and self._pushed_through < self.hwm
        if not remote or not (main_due or self._unpushed_branches) or (now < self._next_push_at and not force):
            return
        try:
            if not self._remote_ready:
                if token := os.environ.get("OXEN_AUTH_TOKEN"):
                    self.repo.configure_auth(token, urlparse(remote).netloc)
                self.repo.set_remote("origin", remote)
                self._remote_ready = True
            if main_due:
                self.repo.push("origin", self.repo.current_branch() or "main")
            for branch in sorted(self._unpushed_branches):
                self.repo.push("origin", branch)
                self._unpushed_branches.discard(branch)
        except OxenError as error:
            failures = self.status["push_failures"] + 1
            self._next_push_at = now + min(3600.0, 10.0 * 2 ** (failures - 1))
            log.warning("push to %s failed (%d in a row), next try in %.0fs: %s",
                        remote, failures, self._next_push_at - now, error)
            self.write_status("running", push_failures=failures, next_push_at=self._next_push_at,
                              last_push={"ok": False, "time": now, "error": str(error)})
            return
        self._pushed_through, self._next_push_at = self.hwm, now + self.settings.push_interval_s
        self.write_status("running", push_failures=0, next_push_at=self._next_push_at,
                          last_push={"ok": True, "time": now, "error": None, "through_seq": self.hwm})

    def commit_models(self) -> None:
        """Answer every model request: its branch and commit, or the error. A panic propagates (the
        request stays and a fresh process takes it again)."""
        if self.repo.last_commit() is None:
            return  # nothing to branch from yet: the flush the request caused commits first
        home = self.repo.current_branch() or model_branches.MAIN_BRANCH
        for request in model_branches.pending_requests(self.settings.data_dir):
            name = request.name.removesuffix(".json")
            try:
                if not model_branches.NAME.match(name):
                    raise ValueError(f"bad model name {name!r}")
                folder = Path(json.loads(request.read_text())["folder"])
                outcome = model_branches.commit_model(self.repo, name, folder)
            except OxenError as error:
                if error.panic:
                    raise
                outcome = {"name": name, "error": str(error)}
                # Group commits must never land on a model branch: if this fails too, run() exits and
                # the fresh process's recover() goes back.
                model_branches.return_to(self.repo, home)
            except (OSError, ValueError, KeyError) as error:  # a missing or unfinished adapter folder
                outcome = {"name": name, "error": f"{type(error).__name__}: {error}"}
            if "error" in outcome:
                log.error("model %s not committed: %s", name, outcome["error"])
            elif self.settings.remote:
                self._unpushed_branches.add(outcome["branch"])
                self.maybe_push(force=True)
                outcome["pushed"] = outcome["branch"] not in self._unpushed_branches
            model_branches.answer(request, outcome)

    def run(self, stop: threading.Event) -> int:
        s = self.settings
        target = self.journal.last_seq() if s.once else None
        flush_file, failures, heartbeat = s.data_dir / FLUSH_FILE, 0, 0.0
        self.write_status("running")
        while not stop.is_set():
            if s.parent_pid and os.getppid() != s.parent_pid:
                log.info("parent %d is gone: stopping", s.parent_pid)
                break
            flush = flush_file.exists()
            if flush:
                flush_file.unlink(missing_ok=True)
            models = bool(model_branches.pending_requests(s.data_dir))  # they flush: branch from the latest
            count, oldest = self.journal.pending_after(self.hwm)
            if target is not None and self.hwm >= target:
                count = 0
            waited = time.time() - (oldest or time.time())
            due = count > 0 and (s.once or flush or models or count >= s.batch or waited >= s.interval_s)
            if due:
                try:
                    self.commit_batch()
                    failures = 0
                except OxenError as error:
                    self.write_status("error", last_error={"time": time.time(), "message": str(error)})
                    if error.panic:  # the bindings may be left in a bad state: a fresh process retries
                        log.error("oxen panicked, exiting for a restart: %s", error)
                        return EXIT_RETRY
                    failures += 1
                except (OSError, sqlite3.Error) as error:  # disk full, journal busy: wait and retry
                    self.write_status("error", last_error={"time": time.time(), "message": str(error)})
                    failures += 1
                if failures:
                    log.error("batch failed (%d in a row): %s", failures, self.status["last_error"]["message"])
                    if failures >= 5:  # persistent: let a fresh process (the supervisor) try
                        return EXIT_RETRY
                    stop.wait(min(30.0, 2.0**failures))
                    self.recover()
                    continue
            if models:  # right after the batch too, so a steady stream of events cannot starve them
                try:
                    self.commit_models()
                except OxenError as error:  # a panic, or stuck on a model branch: a fresh process recovers
                    self.write_status("error", last_error={"time": time.time(), "message": str(error)})
                    log.error("model commit failed, exiting for a restart: %s", error)
                    return EXIT_RETRY
            if due:
                continue
            if s.once:
                self.maybe_push(force=True)
                break
            self.maybe_push()
            if time.monotonic() - heartbeat > 5.0:  # lets `log status` tell a live writer from a dead one
                heartbeat = time.monotonic()
                self.write_status("running", pending=count)
            stop.wait(s.poll_s)
        pending = self.journal.pending_after(self.hwm)[0] if s.once else self.drain()
        self.write_status("stopped", pending=pending)
        return EXIT_OK

    def drain(self) -> int:
        """Told to stop, or the bot is gone: commit all that is journaled, for at most `stop_flush_s` (a
        batch begun is finished), so a clean stop leaves nothing out of Oxen. Returns what is left."""
        deadline = time.monotonic() + self.settings.stop_flush_s
        pending = self.journal.pending_after(self.hwm)[0]
        log.info("stopping: committing %d pending event(s), for at most %.0f s", pending, self.settings.stop_flush_s)
        while pending and time.monotonic() < deadline:
            try:
                self.commit_batch()
            except (OxenError, OSError, sqlite3.Error) as error:  # the next start commits them
                log.error("could not commit before stopping: %s", error)
                break
            pending = self.journal.pending_after(self.hwm)[0]
        (log.warning if pending else log.info)("stopped with %d event(s) not yet in Oxen", pending)
        return pending


def _lock_writer(repo: Path, wait_s: float = 30.0) -> filelock.FileLock:
    """One writer per repository: wait for a previous one (an orphan finishing its batch) to exit.
    The lock (an flock, released by the kernel when the process dies) is held until `release()`."""
    lock_path = writer_lock_path(repo)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_path)
    try:
        lock.acquire(timeout=wait_s, poll_interval=0.2)
    except filelock.Timeout:
        raise BlockingIOError(f"another writer holds {lock_path}") from None
    return lock


def run_writer(settings: WriterSettings, stop: threading.Event | None = None) -> int:
    """Open everything, recover, and run until `stop` (or drained, with `once`). Returns an exit code."""
    stop = stop or threading.Event()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = _lock_writer(settings.repo)
    except BlockingIOError:
        log.error("another writer holds %s", settings.repo)
        return EXIT_RETRY
    journal = Journal(settings.journal)
    writer = None
    try:
        repo = OxenRepository(settings.repo, config_dir=settings.data_dir / ".oxen-config").open_or_init()
        writer = OxenWriter(settings, journal, repo)
        writer.recover()
        return writer.run(stop)
    except WriterConfigError as error:
        log.error("%s", error)
        if writer is not None:
            writer.write_status("error", last_error={"time": time.time(), "message": str(error)})
        return EXIT_CONFIG
    except OxenError as error:
        log.error("oxen failed during start-up: %s", error)
        if writer is not None:
            writer.write_status("error", last_error={"time": time.time(), "message": str(error)})
        return EXIT_RETRY
    finally:
        journal.close()
        lock.release()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = WriterSettings.from_argv(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s oxen-writer: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then exit 0
        signal.signal(sig, lambda *_: stop.set())
    code = run_writer(settings, stop)
    if code == EXIT_RETRY and not os.environ.get(REEXEC_ENV) and not stop.is_set():
        # The notes: a panic on the first open after a crash goes away in a new process. exec gives
        # one (same pid, so a supervisor keeps tracking it); the repository's lock files are
        # close-on-exec, so the new image can take them.
        log.info("retrying once in a fresh process")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "storage.oxen_writer", *argv],
                  {**os.environ, REEXEC_ENV: "1"})
    return code


if __name__ == "__main__":
    sys.exit(main())
