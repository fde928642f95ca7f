"""Trained adapters on their own Oxen branches of the log's repository, committed by the Oxen writer process.

Only the writer may open the repository (the bindings hold its lock until the process exits), so
`refinery train` asks for a commit with a request file and reads the answer from another:

    <data_dir>/model-requests/<name>.json       {"name": ..., "folder": ...}   written by the trainer
    <data_dir>/model-requests/<name>.done.json  {"branch", "commit_id", ...} or {"error": ...}

Between group commits the writer takes each request: it creates branch `models/<name>` from the
current commit, copies the adapter folder to `models/<name>/` in the repository, adds exactly that
folder, commits "refinery model <name>: <method>, <steps> steps", and checks the main branch out again.
The branch holds exactly what the folder holds: the head's files are read back from Oxen and compared
with the folder's by sha256, a new commit is made whenever they differ (a name trained again after its
folder was deleted), and after a commit they are compared again; a branch that still differs is an
error answer, never a commit id. Commit messages decide nothing.
On the main branch only `models/README.md` is ever committed under `models/`, so checking it out again
leaves the data tables as they were and the next group commit lands there. Both files are written
atomically (tmp + rename), so neither side ever reads half of one.

A model branch starts from the log's history: it is the operator's record of which data made which
adapter, not something to publish (a published dataset is an export, its own repository: see
storage.export_repo).

Why main holds `models/README.md`: with oxenai 0.65.1, when two commits that are not ancestors of
each other both create the same new folder (`models/`, on two model branches), the older commit's
tree afterwards resolves that folder to the newer commit's content (measured with export branches:
branch one then listed only two's files). When the folder already exists in the commit branched
from, each branch only changes it, and every branch keeps its own files.
"""


from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage import export_repo
from storage.oxen_repo import OxenError, OxenRepository

log = logging.getLogger("refinery.oxen_writer")

REQUESTS_DIR = "model-requests"
BRANCH_PREFIX = "models/"
MAIN_BRANCH = "main"  # Oxen's default branch: where the writer's group commits live
README = "models/README.md"
README_TEXT = ("# Trained adapters\n\nEach adapter made with `refinery train` is committed on its own branch, "
               "`models/<name>`, in the folder `models/<name>/` (its README.md is the model card, training.json "
               "says which data and settings made it). The main branch holds the interaction log (`tables/`) and "
               "the images (`images/`).\n")
# Must not look like a group commit ("(events A-B)" at the end): the high-water mark skips it.
README_COMMIT = "refinery: models/README.md (adapters live on branches models/<name>)"
# A name becomes a folder and a branch: no spaces, slashes, dots (".." / ".lock") or parentheses (a
# commit's first line must never look like a group commit's "(events A-B)").
NAME = export_repo.NAME


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def requests_dir(data_dir: Path) -> Path:
    return Path(data_dir) / REQUESTS_DIR


def request_commit(data_dir: Path, name: str, folder: Path) -> Path:
    """Ask the writer to commit `folder` on branch `models/<name>`; returns the request file."""
    if not NAME.match(name):
        raise ValueError(f"model name {name!r} must match {NAME.pattern}")
    directory = requests_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    _write_json(path, {"name": name, "folder": str(Path(folder).resolve())})
    return path


def commit_outcome(data_dir: Path, name: str) -> dict[str, Any] | None:
    """The writer's answer to a request: branch and commit id, or an error; None while pending."""
    try:
        return dict(json.loads((requests_dir(data_dir) / f"{name}.done.json").read_text()))
    except FileNotFoundError:
        return None


def pending_requests(data_dir: Path) -> list[Path]:
    directory = requests_dir(data_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.json")
                  if not p.name.startswith(".") and not p.name.endswith(".done.json"))


def commit_title(name: str, meta: Mapping[str, Any]) -> str:
    return f"refinery model {name}: {meta.get('method', '?')}, {meta.get('steps_done', '?')} steps"


def commit_model(repo: OxenRepository, name: str, folder: Path) -> dict[str, Any]:
    """Commit one finished adapter folder on `models/<name>` and come back to the current branch.

    Idempotent: after a crash the request is taken again, and a branch whose head already holds these
    very files is answered with that commit, without a second one. ValueError when the branch cannot be
    made to hold them."""
    meta = json.loads((folder / "training.json").read_text())  # only finished adapters have it
    wanted = file_digests(folder)
    branch, home = BRANCH_PREFIX + name, repo.current_branch() or MAIN_BRANCH
    title = commit_title(name, meta)
    existed = repo.branch_exists(branch)
    ensure_readme(repo)
    try:
        repo.checkout(branch, create=not existed)  # from the current commit of the main branch
        head = repo.last_commit()
        if existed and head is not None and committed_digests(repo, name) == wanted:
            commit_id = head.id
        else:
            target = repo.path / "models" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
            repo.add(target)  # exactly the adapter (removed files too): nothing else in the working tree rides along
            data = meta.get("data", {})
            message = (f"{title}\n\n{data.get('train_examples', '?')} training examples from the journal through "
                       f"event {data.get('journal_seq', '?')}; see models/{name}/README.md")
            commit_id = repo.commit(message)
            held = committed_digests(repo, name)
            if held != wanted:
                differ = sorted(p for p in held.keys() | wanted.keys() if held.get(p) != wanted.get(p))
                raise ValueError(f"branch {branch} does not hold {folder} after commit {commit_id}: "
                                 f"{', '.join(differ)} differ")
    finally:
        return_to(repo, home)
    log.info("model %s committed on branch %s as %s", name, branch, commit_id)
    return {"name": name, "branch": branch, "commit_id": commit_id}


def file_digests(folder: Path) -> dict[str, str]:
    """{path relative to `folder`: sha256} of every file under it: what a model's branch must hold."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def committed_digests(repo: OxenRepository, name: str) -> dict[str, str]:
    """The files the current branch's head holds in `models/<name>/`, restored from Oxen into an emptied
    folder: the working copy may hold leftovers that no commit has."""
    target = repo.path / "models" / name
    shutil.rmtree(target, ignore_errors=True)
    try:
        repo.restore(f"models/{name}")
    except OxenError as error:
        if "not found" not in str(error):  # oxenai 0.65.1: "Merkle tree hash not found for file: ..."
            raise
        return {}
    return file_digests(target) if target.is_dir() else {}


def ensure_readme(repo: OxenRepository) -> None:
    """Commit `models/README.md` on the current (main) branch unless it is there already (see above)."""
    path = repo.path / README
    if not path.is_file() or path.read_text() != README_TEXT:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(README_TEXT)
    repo.add(path)
    if README in repo.status().staged:  # new (or changed); nothing else is staged between batches
        repo.commit(README_COMMIT)


def return_to(repo: OxenRepository, branch: str) -> None:
    """Leave a model branch: unstage leftovers, check `branch` out, drop untracked adapter copies."""
    for path in repo.status().staged:
        repo.unstage(path)
    if repo.current_branch() != branch:
        repo.checkout(branch)
    models = repo.path / "models"
    if not branch.startswith(BRANCH_PREFIX) and models.is_dir():
        for child in models.iterdir():  # on the main branch only the README is tracked there
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            elif child.name != "README.md":
                child.unlink()


def answer(request: Path, outcome: Mapping[str, Any]) -> None:
    """Write the outcome beside the request, then drop the request (in this order: never lost)."""
    name = request.name.removesuffix(".json")
    _write_json(request.with_name(f"{name}.done.json"), outcome)
    request.unlink(missing_ok=True)
