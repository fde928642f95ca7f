"""The trained toy model that ships with the project, and the manifest that says what it is.

`manifest.json` records the recipe's digest and every file's sha256. `copy_toy_model` checks both
before it copies, so a shipped checkpoint that no longer matches its recipe, or a file damaged in a
checkout, is an error naming the file instead of a model that quietly draws something else.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.toyworld.recipe import Recipe
from pipeline.training.defaults import TRAIN_DEFAULTS_FILE

SHIPPED = Path(__file__).with_name("checkpoint")
MANIFEST = "manifest.json"


class ToyModelDamaged(Exception):
    """The shipped checkpoint does not match its manifest or its recipe."""


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, recipe: Recipe, train_defaults: dict[str, Any]) -> dict[str, Any]:
    """Write the training defaults and then the manifest over everything in `folder`."""
    (folder / TRAIN_DEFAULTS_FILE).write_text(json.dumps(train_defaults, indent=2) + "\n", encoding="utf-8")
    manifest = {"recipe_digest": recipe.digest(), "files": _files(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def check_manifest(folder: Path, recipe: Recipe | None = None) -> dict[str, Any]:
    """The manifest of `folder` once every file and the recipe digest match it; ToyModelDamaged if not."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ToyModelDamaged(f"{folder / MANIFEST} cannot be read ({error}); rebuild with "
                              "`refinery toy-model --rebuild`") from error
    expected = (recipe or Recipe()).digest()
    if manifest.get("recipe_digest") != expected:
        raise ToyModelDamaged(f"{folder} was built by another recipe ({manifest.get('recipe_digest')!r}, the "
                              f"current one is {expected!r}); rebuild with `refinery toy-model --rebuild`")
    actual = _files(folder)
    for name, digest in manifest.get("files", {}).items():
        if name not in actual:
            raise ToyModelDamaged(f"{folder / name} is missing")
        if actual[name] != digest:
            raise ToyModelDamaged(f"{folder / name} does not match its sha256 in {MANIFEST}")
    extra = sorted(set(actual) - set(manifest.get("files", {})))
    if extra:
        raise ToyModelDamaged(f"{folder} holds files its manifest does not list: {', '.join(extra)}")
    return manifest


def copy_toy_model(out: Path, source: Path = SHIPPED) -> Path:
    """Copy the checked toy model to `out`; an `out` already holding the same manifest is left as it is."""
    manifest = check_manifest(source)
    if (out / MANIFEST).is_file():
        try:
            if json.loads((out / MANIFEST).read_text(encoding="utf-8")) == manifest:
                return out
        except ValueError:
            pass
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds another model; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
