"""A thin front over the Oxen bindings (`oxenai`, imported as `oxen`): the only module that imports it.

Facts that shape it (see shared/notes/oxen.md):
- Exactly one process may ever open a repository: its lock is held until the process exits. Only the
  Oxen writer process uses this class on the live repository.
- Lock and database failures arrive as `pyo3_runtime.PanicException`, a `BaseException`. Every call
  here turns any failure into `OxenError` (with `panic=True` for panics) so callers can use
  `except OxenError`. After a panic the process should be replaced: the writer exits with a "retry"
  status and is started again in a fresh process (see storage.oxen_writer).
- The config directory (user identity, auth) follows `OXEN_CONFIG_DIR`, read on every call; we set a
  project-owned default before `oxen` is first imported so the bot never touches ~/.config/oxen.
- `oxen` is imported lazily so that importing this module never needs the bindings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

CONFIG_ENV = "OXEN_CONFIG_DIR"
_EXIT_SIGNALS = (KeyboardInterrupt, SystemExit, GeneratorExit)


class OxenError(Exception):
    """An Oxen call failed. `panic` is True when the bindings panicked (replace the process)."""

    def __init__(self, operation: str, message: str, *, panic: bool = False) -> None:
        super().__init__(f"oxen {operation} failed: {message}")
        self.operation = operation
        self.panic = panic


@dataclass(frozen=True)
class CommitInfo:
    id: str
    message: str
    author: str
    timestamp: str  # as the bindings print it, e.g. "2026-11-23 10:57:39.94 +00:00:00"
    parent_ids: tuple[str, ...]


@dataclass(frozen=True)
class RepoStatus:
    """What is staged for the next commit (paths relative to the repository root)."""

    added: tuple[str, ...]
    modified: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def staged(self) -> tuple[str, ...]:
        return self.added + self.modified + self.removed


def default_config_dir(repo_path: Path) -> Path:
    """Where identity and auth live unless OXEN_CONFIG_DIR says otherwise: beside the data."""
    return Path(repo_path).resolve().parent / ".oxen-config"


def _import_oxen(config_dir: Path) -> ModuleType:
    # setdefault: an operator's (or the tests') OXEN_CONFIG_DIR always wins.
    os.environ.setdefault(CONFIG_ENV, str(config_dir))
    Path(os.environ[CONFIG_ENV]).mkdir(parents=True, exist_ok=True)
    import oxen

    return oxen


def _call(operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except _EXIT_SIGNALS:
        raise
    except BaseException as error:  # PanicException derives from BaseException
        panic = type(error).__name__ == "PanicException"
        raise OxenError(operation, str(error) or type(error).__name__, panic=panic) from error


class OxenRepository:
    """One local Oxen repository. Not thread-safe: the writer calls it from one thread only (two
    threads committing in one repository take each other's staged files)."""

    def __init__(self, path: Path | str, *, config_dir: Path | None = None) -> None:
        self.path = Path(path).resolve()
        self._oxen = _import_oxen(config_dir or default_config_dir(self.path))
        self._repo: Any = None

    # -- setup -----------------------------------------------------------------------------------
    def open_or_init(self, user_name: str = "Refinery", user_email: str = "refinery@localhost") -> Self:
        """Open the repository, creating it if needed, with a commit identity configured offline."""
        self.configure_user(user_name, user_email)
        self.path.mkdir(parents=True, exist_ok=True)
        repo = _call("open", self._oxen.Repo, str(self.path))
        if not (self.path / ".oxen").is_dir():
            _call("init", repo.init)
        self._repo = repo
        self.log()  # opens the databases now, so a lock or recovery panic surfaces here, not mid-batch
        return self

    def open_existing(self) -> Self:
        """Open a repository that exists, never creating one (`refinery doctor`'s read-only look)."""
        if not (self.path / ".oxen").is_dir():
            raise OxenError("open", f"{self.path} is not an Oxen repository (no .oxen folder)")
        self._repo = _call("open", self._oxen.Repo, str(self.path))
        self.log()
        return self

    def configure_user(self, name: str, email: str) -> None:
        """Write the commit identity unless one is configured already (never overwrite a human's)."""
        config = Path(os.environ[CONFIG_ENV]) / "user_config.toml"
        if not config.exists():
            _call("config_user", self._oxen.user.config_user, name, email)

    def configure_auth(self, token: str, host: str) -> None:
        """Store a bearer token for `host`. Uses the bindings' low-level call: the public
        `oxen.auth.config_auth` fetches the user from hub.oxen.ai over the network and overwrites
        the commit identity, neither of which the writer wants at start-up."""
        path = str(Path(os.environ[CONFIG_ENV]) / "auth_config.toml")
        low_level = getattr(getattr(self._oxen.auth, "auth", None), "config_auth", None)
        if low_level is not None:
            _call("config_auth", low_level, host, token, path)
        else:
            _call("config_auth", self._oxen.auth.config_auth, token, host=host, path=path)

    @property
    def repo(self) -> Any:
        if self._repo is None:
            raise OxenError("open", f"repository {self.path} is not open: call open_or_init() first")
        return self._repo

    # -- working with files ----------------------------------------------------------------------
    def add(self, path: Path | str) -> None:
        """Stage a file or folder (absolute, or relative to the repository root)."""
        target = Path(path)
        target = target if target.is_absolute() else self.path / target
        _call("add", self.repo.add, str(target))

    def commit(self, message: str) -> str:
        """Commit what is staged; returns the commit id."""
        return str(_call("commit", self.repo.commit, message).id)

    def status(self) -> RepoStatus:
        raw = _call("status", self.repo.status)
        return RepoStatus(
            added=tuple(str(p) for p in raw.added_files()),
            modified=tuple(str(p) for p in raw.modified_files()),
            removed=tuple(str(p) for p in raw.removed_files()),
        )

    def unstage(self, path: str) -> None:
        """Drop `path` from the staging area; the working copy is left alone."""
        _call("restore", self.repo.restore, path, True, None)

    def restore(self, path: str, source: str | None = None) -> None:
        """Write `path` (file or folder, relative to the root) back from `source` (commit id or
        branch; default HEAD) into the working tree. The way to read an old version: checking out a
        commit id is not supported by the bindings."""
        _call("restore", self.repo.restore, path, False, source)

    # -- history ---------------------------------------------------------------------------------
    def log(self) -> list[CommitInfo]:
        """Commits of the current branch, newest first."""
        return [
            CommitInfo(
                id=str(c.id),
                message=str(c.message),
                author=str(c.author),
                timestamp=str(c.timestamp),
                parent_ids=tuple(str(p) for p in c.parent_ids),
            )
            for c in _call("log", self.repo.log)
        ]

    def last_commit(self) -> CommitInfo | None:
        commits = self.log()
        return commits[0] if commits else None

    def current_branch(self) -> str | None:
        branch = _call("current_branch", lambda: self.repo.current_branch)
        return None if branch is None else str(getattr(branch, "name", branch))

    def checkout(self, branch: str, create: bool = False) -> None:
        """Switch to `branch`, creating it when `create` (`repo.branch(x)` does not create one)."""
        _call("checkout", self.repo.checkout, branch, create)

    def branch_exists(self, branch: str) -> bool:
        return bool(_call("branch_exists", self.repo.branch_exists, branch))

    # -- remote (needs an oxen-server; untested here: none can be installed on these machines) ----
    def set_remote(self, name: str, url: str) -> None:
        """Map `name` to `url`. The bindings contact the server to read the repository's id."""
        _call("set_remote", self.repo.set_remote, name, url)

    def push(self, remote: str = "origin", branch: str = "main") -> None:
        _call("push", self.repo.push, remote, branch, False)
