"""`python -m storage.oxen_probe --repo R --data-dir D`: can the log's Oxen repository be opened?

Run by `refinery doctor` as a child process, and only when no writer runs: the bindings keep a
repository's lock until the process exits and panic when two processes touch one repository, so the
probe takes the writer's own lock first (a writer starting meanwhile waits for it) and its process
ends right after. Prints one JSON object: {"state": "ok"|"busy"|"error", ...}.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from pathlib import Path

from storage.oxen_repo import OxenError, OxenRepository
from storage.writer_settings import writer_lock_path


def probe(repo: Path, data_dir: Path) -> dict[str, object]:
    lock_path = writer_lock_path(repo)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"state": "busy"}  # a writer holds it: the caller reads its status file instead
        try:
            opened = OxenRepository(repo, config_dir=data_dir / ".oxen-config").open_existing()
            commits = opened.log()
        except OxenError as error:
            return {"state": "error", "message": str(error)}
        head = commits[0] if commits else None
        return {"state": "ok", "commits": len(commits), "head": head.id if head else None,
                "message": head.message if head else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.oxen_probe", description=__doc__)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.repo, args.data_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
