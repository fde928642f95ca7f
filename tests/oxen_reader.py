"""Read what an Oxen repository's latest commit holds, from a subprocess.

An Oxen repository stays locked by the process that opened it until that process exits, so tests
that keep a bot (and its writer) running read the repository through `committed_rows`, which runs
this module as a child process: it restores tables/ from HEAD into a scratch copy and prints JSON.
With a branch, the copy checks that branch out first (e.g. an adapter's branch, `models/<name>`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def committed_rows(repo: Path, branch: str | None = None) -> dict[str, Any]:
    """{"tables": {kind: [row, ...]}, "images": [path, ...], "log": [message, ...], "branch": name,
    "models": {path: sha256}} of HEAD, or of `branch`'s head."""
    done = subprocess.run([sys.executable, "-m", "tests.oxen_reader", str(repo), *([branch] if branch else [])],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def committed_tree(repo: Path, branch: str | None = None) -> dict[str, Any]:
    """{"files": {path: sha256}, "log": [message, ...]}: EVERY file of the head commit's tree (of `branch`)."""
    args = [str(repo), branch or "", "--tree"]
    done = subprocess.run([sys.executable, "-m", "tests.oxen_reader", *args], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tree(repo_path: Path, branch: str | None) -> dict[str, Any]:
    from storage.oxen_repo import OxenRepository

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "repo"
        shutil.copytree(repo_path, copy)
        for child in copy.iterdir():  # an empty working tree: whatever comes back is the commit's
            if child.name != ".oxen":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        repo = OxenRepository(copy).open_or_init()
        if branch:
            repo.checkout(branch)
        repo.restore(".")
        files = {p.relative_to(copy).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(copy.rglob("*")) if p.is_file() and ".oxen" not in p.relative_to(copy).parts}
        return {"files": files, "log": [c.message for c in repo.log()]}


def _read(repo_path: Path, branch: str | None = None) -> dict[str, Any]:
    from storage.oxen_repo import OxenRepository

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "repo"
        shutil.copytree(repo_path, copy)  # restore into a copy: the live working tree stays as it is
        repo = OxenRepository(copy).open_or_init()
        if branch is not None:
            repo.checkout(branch)
        for folder in ("tables", "images", "models"):
            shutil.rmtree(copy / folder, ignore_errors=True)
            try:
                repo.restore(folder)
            except Exception as error:  # the latest commit has no such folder
                if "not found" not in str(error):
                    raise
        tables: dict[str, list[dict[str, Any]]] = {}
        for shard in sorted((copy / "tables").glob("*/*.parquet")):
            tables.setdefault(shard.parent.name, []).extend(pq.read_table(shard).to_pylist())
        images = sorted(p.relative_to(copy).as_posix() for p in (copy / "images").rglob("*.png"))
        models = {p.relative_to(copy).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted((copy / "models").rglob("*")) if p.is_file()}
        log = [getattr(c, "message", str(c)) for c in repo.log()]
        current = repo.current_branch()
    return {"tables": tables, "images": images, "log": log, "branch": current, "models": models}


if __name__ == "__main__":
    if sys.argv[-1] == "--tree":
        result = _tree(Path(sys.argv[1]), sys.argv[2] or None)
    else:
        result = _read(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
    print(json.dumps(result, default=str))
