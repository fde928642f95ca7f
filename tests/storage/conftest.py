"""Fixtures for the storage tests: a data directory, a journal, records, and a real Oxen writer.

Oxen is never faked. A repository's lock is held until the process that opened it exits, so the
writer always runs as a subprocess, and the test process opens a repository only to read it back
at the very end of a test (`committed_rows`), after which no writer touches that repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.journal import Journal
from storage.oxen_repo import OxenError, OxenRepository
from storage.records import Round, VoteEvent, new_id
from storage.writer_settings import WriterSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def oxen_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Identity and auth for every repository (and writer subprocess) in a throwaway folder."""
    path = tmp_path_factory.mktemp("oxen-config")
    old = os.environ.get("OXEN_CONFIG_DIR")
    os.environ["OXEN_CONFIG_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("OXEN_CONFIG_DIR", None)
    else:
        os.environ["OXEN_CONFIG_DIR"] = old


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def journal(data_dir: Path) -> Iterator[Journal]:
    j = Journal(data_dir / "journal.sqlite3")
    yield j
    j.close()


@pytest.fixture
def log(journal: Journal, data_dir: Path) -> dict[str, str]:
    """The export tests' hand-built log (tests/storage/export_log.py); the round ids by name."""
    from tests.storage.export_log import build_log

    return build_log(journal, data_dir)


@pytest.fixture
def make_round(data_dir: Path) -> Callable[..., Round]:
    """A Round whose four images (and optionally a mask) exist under the data directory."""

    def make(prompt: str = "a lighthouse at dusk", *, mask: bool = False, **overrides: object) -> Round:
        round_id = new_id()
        paths = []
        for k in range(1, 5):
            rel = f"images/{round_id}/{k}.png"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (data_dir / rel).write_bytes(f"png {round_id} {k} ".encode() + os.urandom(256))
            paths.append(rel)
        mask_path = None
        if mask:
            mask_path = f"images/{round_id}/mask.png"
            (data_dir / mask_path).write_bytes(b"mask " + os.urandom(64))
        fields = dict(
            round_id=round_id, prompt=prompt, negative_prompt="", mode="txt2img", steps=4, guidance=7.5,
            width=64, height=64, seeds=(1, 2, 3, 4), model_id="tiny", model_revision="r1",
            scheduler="ddim", image_paths=tuple(paths), requester_id=1001, guild_id=None, channel_id=7,
            source="slash", queued_s=0.01, generate_s=0.5, mask_path=mask_path,
        )
        fields.update(overrides)
        return Round(**fields)  # type: ignore[arg-type]

    return make


@pytest.fixture
def make_vote() -> Callable[..., VoteEvent]:
    def make(round_id: str, candidate: int, user_id: int, action: str = "add", message_id: int = 555
             ) -> VoteEvent:
        return VoteEvent(new_id(), round_id, candidate, user_id, f"{candidate}\ufe0f\u20e3", action, None, 7,
                         message_id)

    return make


@pytest.fixture
def settings(data_dir: Path) -> WriterSettings:
    return WriterSettings(journal=data_dir / "journal.sqlite3", repo=data_dir / "oxen", data_dir=data_dir,
                          interval_s=0.05, batch=50, poll_s=0.05)


def writer_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def writer_cmd(settings: WriterSettings) -> Callable[..., list[str]]:
    def cmd(*extra: str, batch: int | None = None, pause_at: str | None = None) -> list[str]:
        argv = settings.to_argv()
        if batch is not None:
            argv[argv.index("--batch") + 1] = str(batch)
        if pause_at is not None:  # the real writer, stopping for good at that step (tests/paused_writer.py)
            return [sys.executable, "-m", "tests.paused_writer", pause_at, *argv, *extra]
        return [sys.executable, "-m", "storage.oxen_writer", *argv, *extra]

    return cmd


@pytest.fixture
def run_once(writer_cmd: Callable[..., list[str]]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m storage.oxen_writer ... --once` to completion."""

    def run(batch: int | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(writer_cmd("--once", batch=batch), cwd=ROOT, env=writer_env(**env),
                              capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture
def spawn_writer(writer_cmd: Callable[..., list[str]]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `python -m storage.oxen_writer ...` without waiting; every one is killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def spawn(*extra: str, batch: int | None = None, pause_at: str | None = None, **env: str
              ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(writer_cmd(*extra, batch=batch, pause_at=pause_at), cwd=ROOT, env=writer_env(**env),
                                text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """Poll `condition` until it is true, or fail after `timeout` seconds."""

    def wait(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)

    return wait


@pytest.fixture
def read_repo(settings: WriterSettings) -> Callable[[], tuple[dict[str, list[dict]], OxenRepository]]:
    """Every row of every shard in the repository's latest commit, read back through Oxen: the
    working copies of tables/ and images/ are deleted and restored from HEAD first, so leftovers
    that were never committed cannot count. Opens the repository in this process: call it last."""

    def read() -> tuple[dict[str, list[dict]], OxenRepository]:
        repo = OxenRepository(settings.repo).open_or_init()
        assert repo.status().staged == (), "nothing may be left staged"
        for folder in ("tables", "images"):
            shutil.rmtree(settings.repo / folder, ignore_errors=True)
            try:
                repo.restore(folder)
            except OxenError as error:  # the latest commit has no such folder
                assert "not found" in str(error), error
        rows: dict[str, list[dict]] = {}
        for shard in sorted((settings.repo / "tables").glob("*/*.parquet")):
            rows.setdefault(shard.parent.name, []).extend(pq.read_table(shard).to_pylist())
        return rows, repo

    return read
