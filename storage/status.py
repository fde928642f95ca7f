"""`refinery log status`: where the journal and the Oxen writer stand, as human text.

Reads the journal (SQLite allows readers beside the bot and the writer) and the writer's status file;
it never opens the Oxen repository, whose lock belongs to the writer process for as long as it lives.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from storage.journal import Journal, JournalStats
from storage.writer_settings import STATUS_FILE, lag_threshold_s

_STALE_S = 30.0  # the writer rewrites its status at least every ~5 s while alive


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))} ({_duration(max(0.0, now - at))} ago)"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _journal_stats(journal_path: Path) -> JournalStats | None:
    if not journal_path.exists():
        return None
    journal = Journal(journal_path)
    try:
        return journal.stats()
    finally:
        journal.close()


def _journal_lines(journal_path: Path, stats: JournalStats | None) -> list[str]:
    if stats is None:
        return [f"Journal: {journal_path} does not exist yet"]
    lines = [f"Journal: {journal_path} ({_size(stats.file_bytes)})",
             f"  events: {stats.events_total:,} total, {stats.unsynced:,} not yet in Oxen"
             f" (last seq {stats.last_seq:,}, synced through {stats.synced_through:,})"]
    if stats.oldest_unsynced_age_s is not None:
        lines.append(f"  oldest unsynced event: {stats.oldest_unsynced_age_s:.1f} s old")
    for kind, total in sorted(stats.by_kind.items()):
        lines.append(f"    {kind:<15} {total:>9,} total {stats.unsynced_by_kind.get(kind, 0):>7,} unsynced")
    return lines


def _lag_line(stats: JournalStats | None, interval_s: float) -> list[str]:
    """How far Oxen is behind the journal, and whether that is more than the commit interval explains."""
    if stats is None:
        return []
    if not stats.unsynced:
        return ["Oxen lag: none (every journaled event is in Oxen)"]
    age = stats.oldest_unsynced_age_s or 0.0
    verdict = "BEHIND" if age > lag_threshold_s(interval_s) else "normal"
    return [f"Oxen lag: {verdict}: {stats.unsynced:,} event(s) not in Oxen yet, the oldest {_duration(age)} old "
            f"(commits are due every {_duration(interval_s)})"]


def _no_status_lines(status_path: Path, stats: JournalStats | None) -> list[str]:
    if stats is not None and stats.synced_through > 0:  # the journal itself says a writer committed
        return [f"Oxen writer: no status file at {status_path}, but the journal's events through seq "
                f"{stats.synced_through:,} are in Oxen: a writer has run here and left no status (an older "
                "version, or the file was removed); it writes one when it next starts"]
    return [f"Oxen writer: no status yet at {status_path}: no writer has run with this data directory. "
            "Is it the bot's? Pass the bot's config with --config (`refinery demo` keeps its data under "
            "<--out>/data)."]


def _writer_lines(status_path: Path, now: float, stats: JournalStats | None = None) -> list[str]:
    try:
        status = json.loads(status_path.read_text())
    except FileNotFoundError:
        return _no_status_lines(status_path, stats)
    except (OSError, ValueError) as error:
        return [f"Oxen writer: unreadable status file {status_path}: {error}"]
    state = status.get("state", "unknown")
    updated = status.get("updated_at")
    if state in ("running", "error") and not _alive(status.get("pid")):
        state = f"not running (last said {state!r})"
    elif state == "running" and updated is not None and now - updated > _STALE_S:
        state = "running? (status is stale)"
    lines = [f"Oxen writer: {state}, pid {status.get('pid')}, status updated {_ago(updated, now)}",
             f"  repository: {status.get('repo')}",
             f"  committed through seq {status.get('committed_through_seq', 0):,}"
             f" ({status.get('events_committed_session', 0):,} events this run)"]
    if commit := status.get("last_commit"):
        lines.append(f"  last commit: {commit['id']} at {_ago(commit.get('time'), now)}, "
                     f"{commit.get('seconds', 0):.3f} s")
        lines.append(f"    {commit.get('message')}")
    else:
        lines.append("  last commit: none this run")
    if error := status.get("last_error"):
        lines.append(f"  last error: {_ago(error.get('time'), now)}: {error.get('message')}")
    if status.get("missing_files"):
        lines.append(f"  files missing from the data directory: {status['missing_files']}")
    if not status.get("remote"):
        lines.append("  push: no remote configured")
    else:
        push = status.get("last_push")
        if push is None:
            lines.append(f"  push to {status['remote']}: not attempted yet")
        elif push.get("ok"):
            lines.append(f"  push to {status['remote']}: ok at {_ago(push.get('time'), now)}")
        else:
            lines.append(f"  push to {status['remote']}: FAILED {status.get('push_failures', 1)} time(s), "
                         f"last {_ago(push.get('time'), now)}: {push.get('error')}")
        if (retry := status.get("next_push_at")) is not None:
            lines.append(f"    next push in {max(0.0, retry - now):.0f} s")
    return lines


def log_status(journal_path: Path | str, data_dir: Path | str, *, interval_s: float = 10.0) -> str:
    """The text `refinery log status` prints; `interval_s` is the writer's commit interval."""
    now = time.time()
    journal_path, data_dir = Path(journal_path).absolute(), Path(data_dir).absolute()
    stats = _journal_stats(journal_path)
    lines = (_journal_lines(journal_path, stats) + _writer_lines(data_dir / STATUS_FILE, now, stats)
             + _lag_line(stats, interval_s))
    return "\n".join(lines)
