"""Dataset exports: the journal replayed into folders that training code reads without conversion.

`build_dataset` replays the append-only log and writes one folder per format (see `REGISTRY`), plus
`README.md` (the dataset card: a Hugging Face `configs:` header and every rule) and `export.json`.
Users appear only as keyed pseudonyms. Committing an export to its own Oxen repository is
`storage.export_repo`'s job. The rules of which rounds and votes count (`Selection`) are shared with
`refinery train`.
"""

from storage.exports._build import EmptyExportError, ExportResult, build_dataset
from storage.exports._card import dataset_card
from storage.exports._formats import FORMATS, REGISTRY, Format, winner_side
from storage.exports._selection import (
    CAPTIONED_MODES,
    NONE_IS_GOOD,
    Comparison,
    ExportFilters,
    LogState,
    Selection,
    candidate_model,
    decided_pairs,
    public_model_id,
    replay,
    round_comparisons,
)

__all__ = ["CAPTIONED_MODES", "FORMATS", "NONE_IS_GOOD", "REGISTRY", "Comparison", "EmptyExportError",
           "ExportFilters", "ExportResult", "Format", "LogState", "Selection", "build_dataset", "candidate_model",
           "dataset_card", "decided_pairs", "public_model_id", "replay", "round_comparisons", "winner_side"]
