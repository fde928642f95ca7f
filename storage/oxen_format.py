"""How a group commit lays records down in the Oxen repository: Parquet shards and commit messages.

A shard holds one kind's events of one batch: `seq` then the record's fields, with the Arrow schema
derived from the record dataclass's annotations. A commit message's first line counts the batch's
records per kind and names its seq range; its body names the journal it came from.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pyarrow as pa
import pyarrow.parquet as pq

from storage.journal import JournalEvent
from storage.records import RECORD_TYPES, Record

_LABELS = {"round_messages": "round message", "moderation": "moderation action"}
_ARROW: dict[Any, pa.DataType] = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def arrow_type(hint: Any) -> pa.DataType:
    """Record field annotation -> Arrow type: str/int/float/bool, `X | None` (nullable X), tuple[X, ...]
    (list<X>)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return arrow_type(inner)
    if origin is tuple:
        return pa.list_(arrow_type(get_args(hint)[0]))
    if hint in _ARROW:
        return _ARROW[hint]
    raise TypeError(f"no Arrow type for record field annotation {hint!r}")


def table_schema(cls: type[Record]) -> pa.Schema:
    """`seq` (the journal's, int64, not null) then the record's fields in declaration order."""
    hints = get_type_hints(cls)
    return pa.schema([pa.field("seq", pa.int64(), nullable=False)]
                     + [pa.field(f.name, arrow_type(hints[f.name])) for f in fields(cls)])


def write_shard(path: Path, events: list[JournalEvent]) -> None:
    cls = type(events[0].record)
    rows = [{"seq": e.seq, **e.record.to_dict()} for e in events]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table_schema(cls)), path, compression="zstd")


def commit_message(first: int, last: int, counts: Mapping[str, int], journal_id: str) -> str:
    parts = []
    for kind in RECORD_TYPES:
        if n := counts.get(kind, 0):
            label = _LABELS.get(kind, kind.rstrip("s"))
            parts.append(f"{n} {label}{'' if n == 1 else 's'}")
    return f"refinery: {', '.join(parts)} (events {first}-{last})\n\njournal {journal_id}"
