"""What the Oxen writer process and the bot that supervises it agree on.

`WriterSettings` (and the command line it turns into and back), the writer's exit codes, and the
files and environment variables through which the two talk: the status file the writer keeps, the
flush request the bot touches, the marker of a writer's one re-exec.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import filelock

EXIT_OK, EXIT_RETRY, EXIT_CONFIG = 0, 75, 78  # sysexits: TEMPFAIL (start a fresh process), CONFIG
STATUS_FILE = "writer-status.json"
FLUSH_FILE = "oxen-writer.flush"
REEXEC_ENV = "REFINERY_WRITER_REEXEC"
_DESCRIPTION = "The Oxen writer: the ONE process that owns the Oxen repository and drains the journal into it."


@dataclass(frozen=True)
class WriterSettings:
    journal: Path
    repo: Path
    data_dir: Path
    interval_s: float = 5.0  # commit once the oldest pending event has waited this long...
    batch: int = 500  # ...or this many are pending; also the most events per commit
    once: bool = False  # commit everything journaled so far, push if configured, exit
    remote: str | None = None
    push_interval_s: float = 300.0
    parent_pid: int | None = None  # exit (after the current batch) when this parent goes away
    poll_s: float = 0.2
    stop_flush_s: float = 30.0  # told to stop: commit what is journaled for at most this long, then exit

    @property
    def status_path(self) -> Path:
        return self.data_dir / STATUS_FILE

    def to_argv(self) -> list[str]:
        argv = ["--journal", str(self.journal), "--repo", str(self.repo), "--data-dir", str(self.data_dir),
                "--interval", str(self.interval_s), "--batch", str(self.batch), "--stop-flush", str(self.stop_flush_s)]
        if self.once:
            argv.append("--once")
        if self.remote:
            argv += ["--remote", self.remote, "--push-interval", str(self.push_interval_s)]
        if self.parent_pid:
            argv += ["--parent-pid", str(self.parent_pid)]
        return argv

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> WriterSettings:
        p = argparse.ArgumentParser(prog="python -m storage.oxen_writer", description=_DESCRIPTION)
        p.add_argument("--journal", type=Path, required=True)
        p.add_argument("--repo", type=Path, required=True)
        p.add_argument("--data-dir", type=Path, required=True)
        p.add_argument("--interval", type=float, default=5.0)
        p.add_argument("--batch", type=int, default=500)
        p.add_argument("--once", action="store_true")
        p.add_argument("--remote")
        p.add_argument("--push-interval", type=float, default=300.0)
        p.add_argument("--parent-pid", type=int)
        p.add_argument("--stop-flush", type=float, default=30.0)
        a = p.parse_args(argv)
        if a.batch < 1 or a.interval < 0 or a.stop_flush < 0:
            p.error(f"--batch must be >= 1, --interval and --stop-flush >= 0, got {a.batch}, {a.interval} "
                    f"and {a.stop_flush}")
        return cls(a.journal, a.repo, a.data_dir, a.interval, a.batch, a.once, a.remote, a.push_interval,
                   a.parent_pid, stop_flush_s=a.stop_flush)


def lag_threshold_s(interval_s: float) -> float:
    """Oxen is "behind" when the oldest event not in it is older than this: more than the commit
    interval explains (a dead or restarting writer, a failing commit, a backlog)."""
    return max(30.0, 3.0 * interval_s)


def writer_lock_path(repo: Path) -> Path:
    """The file a running writer holds an exclusive flock on (one writer per repository)."""
    return repo.resolve().parent / f".{repo.resolve().name}.writer.lock"


def writer_running(repo: Path) -> bool:
    """Whether some process's writer holds `repo` now (a bot's, or a `--once` run)."""
    path = writer_lock_path(repo)
    if not path.exists():
        return False
    probe = filelock.FileLock(path)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    probe.release()
    return False
