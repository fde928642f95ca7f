"""Building an export folder: the log replayed, each round offered to every chosen format.

The folder is built beside `out` and renamed into place, so a half-written export never looks
finished. Images are copied once (rows and formats share them); formats whose rows carry the image
itself (pairs, kto, ...) read each file once per round.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image

from storage.exports._card import dataset_card, iso
from storage.exports._formats import FORMATS, REGISTRY, Format, naive_utc
from storage.exports._selection import SAFE_ID, ExportFilters, Selection, replay
from storage.journal import Journal
from storage.pseudonyms import Pseudonymiser
from storage.records import Round

log = logging.getLogger("refinery.exports")

JPEG_QUALITY = 95


class EmptyExportError(ValueError):
    """No round gave a row in any chosen format: there is nothing to write (nor to commit)."""


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    counts: dict[str, int]
    files: list[Path]


@dataclass(frozen=True)
class RoundView:
    """A usable round as the formats see it."""

    rnd: Round
    voters: dict[int, set[int]]
    net: list[int]
    prompt: str | None  # user mentions replaced by pseudonyms
    created: datetime

    @property
    def n(self) -> int:
        return len(self.rnd.image_paths)


class _Sink:
    """One table written in row groups, so pairs with image bytes never sit in memory whole."""

    def __init__(self, path: Path, fmt: Format) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fmt, self.count = path, fmt, 0
        holds_images = any(pa.types.is_binary(t) or pa.types.is_struct(t) for _, t, _ in fmt.columns)
        self.batch = 64 if holds_images else 1024
        self.parquet = pq.ParquetWriter(path, fmt.schema)
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.fmt.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.parquet.close()


class Builder:
    def __init__(self, selection: Selection, folder: Path, pseudonymiser: Pseudonymiser,
                 formats: Sequence[str]) -> None:
        self.selection, self.folder, self.pseudo = selection, folder, pseudonymiser
        self.data_dir = selection.data_dir
        self.sinks = {f: _Sink(folder / REGISTRY[f].file, REGISTRY[f]) for f in formats}
        self.copied: set[str] = set()
        self.used_rounds: set[str] = set()
        self.skipped: Counter[str] = Counter()
        self._jpegs: dict[tuple[str, int], bytes] = {}

    def add(self, fmt: str, row: dict[str, Any]) -> None:
        self.sinks[fmt].add(row)

    def copy(self, rnd: Round, k: int) -> str:
        return self.put(self.data_dir / rnd.image_paths[k - 1], f"images/{rnd.round_id}/{k}.png")

    def copy_round(self, rnd: Round) -> list[str]:
        return [self.copy(rnd, k) for k in range(1, len(rnd.image_paths) + 1)]

    def put(self, source: Path, dest: str) -> str:
        """Copy a file into the export once (several rows and formats share an image)."""
        if dest not in self.copied:
            (self.folder / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.folder / dest)
            self.copied.add(dest)
        return dest

    def png(self, rnd: Round, k: int) -> bytes:
        """Candidate k's file as it is (a PNG), for a row that carries its image."""
        return (self.data_dir / rnd.image_paths[k - 1]).read_bytes()

    def jpeg(self, rnd: Round, k: int) -> bytes:
        key = (rnd.round_id, k)
        if key not in self._jpegs:
            buffer = io.BytesIO()
            with Image.open(self.data_dir / rnd.image_paths[k - 1]) as image:
                image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
            self._jpegs[key] = buffer.getvalue()
        return self._jpegs[key]

    def read(self, relative: str) -> bytes:
        return (self.folder / relative).read_bytes()

    def edit_source(self, v: RoundView) -> tuple[Round, str | None, str | None] | None:
        """(parent, the refined image in the export or None, the mask in the export or None) of a
        refinement round whose parent and files exist; None (and a warning) otherwise."""
        rnd = v.rnd
        if rnd.parent_round_id is None:
            return None
        parent, pc = self.selection.state.rounds.get(rnd.parent_round_id), rnd.parent_candidate
        mask_source = None if rnd.mask_path is None else self.selection.source(rnd.mask_path)
        images = () if parent is None else parent.image_paths
        if (parent is None or not SAFE_ID.match(parent.round_id) or (rnd.mask_path and mask_source is None)
                or (pc is not None and not (0 < pc <= len(images) and self.selection.source(images[pc - 1])))):
            log.warning("export: round %s: no edit rows, its parent %s, parent image %s or mask %s is missing",
                        rnd.round_id, rnd.parent_round_id, pc, rnd.mask_path)
            return None
        mask = None if mask_source is None else self.put(mask_source, f"images/{rnd.round_id}/mask{mask_source.suffix}")
        return parent, None if pc is None else self.copy(parent, pc), mask

    def add_round(self, rnd: Round) -> None:
        if not self.selection.usable(rnd):
            return
        voters = self.selection.voters_of(rnd)
        view = RoundView(rnd, voters, Selection.net_votes(voters, len(rnd.image_paths)),
                         self.pseudo.scrub(rnd.prompt), naive_utc(rnd.created_at))
        rows = sum(REGISTRY[fmt].rows(self, view) for fmt in self.sinks)
        if rows:
            self.used_rounds.add(rnd.round_id)
        self._jpegs.clear()

    def close(self) -> dict[str, int]:
        for sink in self.sinks.values():
            sink.close()
        if "ratings" in self.sinks:  # the CSV copy is for people reading the export, not for training
            pacsv.write_csv(pq.read_table(self.sinks["ratings"].path), self.folder / "ratings" / "train.csv")
        return {fmt: sink.count for fmt, sink in self.sinks.items()}


def build_dataset(journal: Journal, data_dir: Path, out: Path, formats: Sequence[str], filters: ExportFilters,
                  pseudonymiser: Pseudonymiser, *, name: str,
                  progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Write the chosen formats of the log into `out` (absent or empty); `progress(i, total)` per round."""
    wanted, out = list(dict.fromkeys(formats)), Path(out)  # the caller's order, without repeats
    if not wanted or any(f not in FORMATS for f in wanted):
        raise ValueError(f"formats must be some of {FORMATS}, got {list(formats)!r}")
    if not name.strip():
        raise ValueError(f"an export needs a name, got {name!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"export folder {out} already exists and is not empty")
    started = time.time()
    state = replay(journal)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        selection = Selection(state, Path(data_dir), filters)
        builder = Builder(selection, partial, pseudonymiser, wanted)
        ordered = selection.rounds()
        for i, rnd in enumerate(ordered, start=1):
            builder.add_round(rnd)
            if progress is not None:
                progress(i, len(ordered))
        counts = builder.close()
        if not any(counts.values()):
            left_out = selection.left_out + builder.skipped
            why = "".join(f"; {reason}: {n}" for reason, n in left_out.most_common())
            raise EmptyExportError(f"no round gave a row for {', '.join(wanted)} ({len(ordered)} rounds in the log"
                                   f"{why})")
        meta = {"name": name, "created_at": started, "created_at_iso": iso(started), "journal_seq": state.last_seq,
                "formats": wanted, "counts": counts, "rounds": len(builder.used_rounds),
                "images": len(builder.copied), "users_opted_out": len(state.forgotten),
                "left_out": dict(sorted((selection.left_out + builder.skipped).items())),
                "filters": filters.describe(), "files": {f: REGISTRY[f].file for f in wanted}}
        (partial / "export.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (partial / "README.md").write_text(dataset_card(meta), encoding="utf-8")
        os.replace(partial, out)  # rename(2) also replaces an empty directory
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("export %s: %s from %d rounds through seq %d in %.1f s", name, counts, len(builder.used_rounds),
             state.last_seq, time.time() - started)
    return ExportResult(out, counts, sorted(p for p in out.rglob("*") if p.is_file()))
