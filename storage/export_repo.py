"""Each dataset export is its own Oxen repository: its tree and its history hold the export and nothing else.

An export used to be a branch cut from the interaction log's repository, so pushing or sharing it
shared the raw tables (Discord ids, the rows of users who opted out, flagged and removed rounds) that
the export exists to filter out: a branch carries its ancestors. Oxen has no orphan branches, so the
export folder itself (`<data_dir>/exports/<name>/`) becomes a repository with a single commit.

The Oxen bindings hold a repository's lock until the process exits, and only the Oxen writer may
ever open the log's repository; an export's repository is new and touched once, so a short-lived
child process commits it (`python -m storage.export_repo FOLDER NAME`, which prints one JSON line):
neither the bot nor the writer ever holds its lock, and anyone may push it or read it afterwards.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage.child_env import child_environment

TITLE = "refinery export {name}: {rows}"
# An export name becomes a folder (and an adapter's name a branch): no spaces, slashes, dots or parentheses.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def commit_title(name: str, counts: Mapping[str, int]) -> str:
    rows = ", ".join(f"{n} {fmt}" for fmt, n in counts.items())
    return TITLE.format(name=name, rows=rows or "no rows")


def commit_in_process(folder: Path, name: str) -> dict[str, Any]:
    """Init the folder as a repository and commit all of it (imports oxen: call in a child process).

    Idempotent: a folder already committed under this title is answered with its commit."""
    from storage.oxen_repo import OxenRepository

    folder = Path(folder).resolve()
    meta = json.loads((folder / "export.json").read_text())  # only finished exports have it
    title = commit_title(name, meta.get("counts", {}))
    repo = OxenRepository(folder).open_or_init()
    head = repo.last_commit()
    if head is not None and head.message.split("\n", 1)[0] == title:
        commit_id = head.id
    else:
        for child in sorted(folder.iterdir()):
            if child.name != ".oxen":
                repo.add(child)
        message = (f"{title}\n\n{meta.get('rounds', 0)} rounds, {meta.get('images', 0)} images, journal through "
                   f"event {meta.get('journal_seq', '?')}; see README.md")
        commit_id = repo.commit(message)
    return {"name": name, "repository": str(folder), "branch": repo.current_branch() or "main",
            "commit_id": commit_id, "counts": meta.get("counts", {})}


def commit_export(folder: Path, name: str, *, config_dir: Path | None = None,
                  timeout_s: float = 300.0) -> dict[str, Any]:
    """Commit an export folder as its own repository from a child process; {"commit_id", ...} or {"error"}."""
    env = child_environment()  # the commit needs no secret of the bot's
    if config_dir is not None:
        env.setdefault("OXEN_CONFIG_DIR", str(config_dir))  # the commit identity the writer uses too
    try:
        done = subprocess.run([sys.executable, "-m", "storage.export_repo", str(folder), name], capture_output=True,
                              text=True, timeout=timeout_s, env=env, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"the Oxen commit took over {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": name, "error": f"the Oxen commit failed: {last[:300]}"}
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.export_repo", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    outcome = commit_in_process(args.folder, args.name)
    print(json.dumps(outcome))  # oxen prints its own lines on stdout: ours is the last
    return 0


if __name__ == "__main__":
    sys.exit(main())
