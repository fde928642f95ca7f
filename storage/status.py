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

from storage.journal import Journal
from storage.writer_settings import STATUS_FILE

_STALE_S = 30.0  # the writer rewrites its status at least every ~5 s while alive


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    s = max(0.0, now - at)
    text = f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))} ({text} ago)"


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


def _journal_lines(journal_path: Path) -> list[str]:
    if not journal_path.exists():
        return [f"Journal: {journal_path} does not exist yet"]
    journal = Journal(journal_path)
    try:
        stats = journal.stats()
    finally:
        journal.close()
    lines = [f"Journal: {journal_path} ({_size(stats.file_bytes)})",
             f"  events: {stats.events_total:,} total, {stats.unsynced:,} not yet in Oxen"
             f" (last seq {stats.last_seq:,}, synced through {stats.synced_through:,})"]
    if stats.oldest_unsynced_age_s is not None:
        lines.append(f"  oldest unsynced event: {stats.oldest_unsynced_age_s:.1f} s old")
    for kind, total in sorted(stats.by_kind.items()):
        lines.append(f"    {kind:<15} {total:>9,} total {stats.unsynced_by_kind.get(kind, 0):>7,} unsynced")
    return lines


def _writer_lines(status_path: Path, now: float) -> list[str]:
    try:
        status = json.loads(status_path.read_text())
    except FileNotFoundError:
        return ["Oxen writer: no status yet (it has never run with this data directory)"]
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


def log_status(journal_path: Path | str, data_dir: Path | str) -> str:
    """The text `refinery log status` prints."""
    now = time.time()
    lines = _journal_lines(Path(journal_path)) + _writer_lines(Path(data_dir) / STATUS_FILE, now)
    return "\n".join(lines)
