"""Where the data goes: disk space, the data directory and journal, the Oxen repository, Redis, the
export key. Nothing here creates or changes anything (a probe file in the data directory excepted).

The Oxen repository is never opened by this process: the bindings hold its lock until the process
exits. While a writer runs, its status file says how it stands; otherwise a child process
(storage/oxen_probe.py) opens it, holding the writer's lock meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bot.config import Config
from bot.doctor._result import CheckResult, fail, first_line, ok, skip, warn
from storage.child_env import child_environment
from storage.pseudonyms import MIN_KEY_BYTES
from storage.writer_settings import STATUS_FILE, writer_running

MIN_FREE_GB = 1.0  # below this the journal, images and Oxen commits can fail at any moment
COMFORTABLE_FREE_GB = 10.0  # a model download (4.3 GB) and weeks of rounds (~1.5 MB each at 512²)
_PROBE_TIMEOUT_S = 60.0


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent."""
    path = path.resolve()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def disk_check(config: Config) -> CheckResult:
    where = _existing(config.data_dir)
    free_gb = shutil.disk_usage(where).free / 1e9
    text = f"{free_gb:.1f} GB free at {where}"
    if free_gb < MIN_FREE_GB:
        return fail("disk", f"{text}: under {MIN_FREE_GB:.0f} GB; free some space or move storage.data_dir")
    if free_gb < COMFORTABLE_FREE_GB:
        return warn("disk", f"{text}: a model download needs ~4.3 GB and every round ~1.5 MB of PNGs")
    return ok("disk", text)


def data_dir_check(config: Config) -> CheckResult:
    """The data directory is (or can be made) writable; an existing journal passes SQLite's quick check."""
    name, folder = "data directory", config.data_dir
    if not folder.exists():
        parent = _existing(folder)
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return fail(name, f"{folder} does not exist and {parent} is not a writable folder: create it or set "
                              "storage.data_dir")
        return ok(name, f"{folder} will be created at the first start")
    if not folder.is_dir():
        return fail(name, f"{folder} is not a folder: set storage.data_dir to a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as error:
        return fail(name, f"{folder} is not writable ({first_line(error)})")
    journal = config.journal_path
    if not journal.exists():
        return ok(name, f"{folder} writable; no journal yet")
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            events = db.execute("SELECT count(*) FROM events").fetchone()[0]
    except sqlite3.Error as error:
        return fail(name, f"journal {journal} cannot be read: {first_line(error)}")
    if verdict != "ok":
        return fail(name, f"journal {journal} is damaged (SQLite quick_check: {verdict})")
    return ok(name, f"{folder} writable; journal {journal.name}: {events:,} events, intact")


def oxen_check(config: Config) -> CheckResult:
    name, repo = "oxen", config.oxen_repo_path
    status_path = config.data_dir / STATUS_FILE
    if writer_running(repo):
        return _from_status(name, repo, status_path)
    if not (repo / ".oxen").is_dir():
        if repo.exists() and any(repo.iterdir()):
            return fail(name, f"{repo} holds files but is not an Oxen repository: set storage.oxen_repo elsewhere")
        return ok(name, f"{repo} will be created by the Oxen writer at the first start")
    command = [sys.executable, "-m", "storage.oxen_probe", "--repo", str(repo), "--data-dir", str(config.data_dir)]
    root = Path(__file__).resolve().parents[2]
    env = child_environment(PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, env=env)
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError, OSError) as error:
        return fail(name, f"{repo} could not be opened by a probe process: {first_line(error)}")
    if answer.get("state") == "busy":
        return _from_status(name, repo, status_path)
    if answer.get("state") != "ok":
        return fail(name, f"{repo}: {answer.get('message', 'unknown error')}")
    head = f", last: {answer['message']!r}" if answer.get("message") else ""
    return ok(name, f"{repo}: {answer['commits']} commit(s){head}; no writer running now")


def _from_status(name: str, repo: Path, status_path: Path) -> CheckResult:
    """A writer holds the repository: its status file is the only safe source."""
    try:
        status = json.loads(status_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return warn(name, f"a writer holds {repo} but {status_path} is unreadable yet")
    error = status.get("last_error") or {}
    if status.get("state") == "error" and error:
        return fail(name, f"the writer of {repo} reports an error: {error.get('message', '?')}")
    age = time.time() - float(status.get("updated_at") or 0)
    commit = status.get("last_commit") or {}
    return ok(name, f"a writer (pid {status.get('pid', '?')}) holds {repo}: {status.get('state', '?')}, "
                    f"{status.get('pending', 0)} pending, status {age:.0f} s old"
                    + (f", last commit {str(commit.get('id', ''))[:12]}" if commit else ""))


def redis_check(config: Config) -> CheckResult:
    url = config.queue.redis_url
    if not url:
        return skip("redis", "queue.redis_url not set: the in-process queue runs jobs on this machine")
    import redis

    shown = url.split("@")[-1]  # never print a password in the URL
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
        workers = client.zcount(f"{config.queue.redis_prefix}:workers", time.time() - 30, "+inf")
    except redis.RedisError as error:
        return fail("redis", f"cannot reach Redis at {shown}: {first_line(error)}")
    finally:
        client.close()
    if not workers:
        return warn("redis", f"{shown} answers, but no `refinery worker` is alive: jobs will wait until one starts")
    return ok("redis", f"{shown} answers; {workers} worker(s) alive")


def export_key_check(key: str) -> CheckResult:
    if not key:
        return warn("export key", "REFINERY_EXPORT_KEY is not set: /export and `refinery export` refuse until it "
                                  "is (a long random secret, e.g. `openssl rand -hex 32`; keep it: it keys the "
                                  "pseudonyms)")
    if len(key.encode("utf-8")) < MIN_KEY_BYTES:
        return warn("export key", f"REFINERY_EXPORT_KEY is shorter than {MIN_KEY_BYTES} bytes: /export and "
                                  "`refinery export` refuse it (a short key lets anyone who guesses it undo the "
                                  "pseudonyms); use `openssl rand -hex 32`")
    return ok("export key", f"set ({len(key)} characters; never printed)")
