"""Training examples chosen from the log: what `refinery train` learns from.

The selection itself (which rounds, which votes) is the export code's (`storage.exports`), so a
trained adapter and an exported dataset always agree on what the community said. This module holds
the shapes that cross from storage into the trainer (`pipeline.training`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PreferencePair:
    """One Diffusion-DPO example: `winner` was preferred to `loser` by the voters of one round."""

    caption: str  # the prompt that made both images
    winner: Path  # absolute path of a PNG
    loser: Path
    round_id: str
    margin: int  # voters preferring the winner minus voters preferring the loser (> 0)


@dataclass(frozen=True)
class FeedbackImage:
    """One Diffusion-KTO example: an image the community found desirable or not."""

    caption: str
    image: Path  # absolute path of a PNG
    desirable: bool
    round_id: str
    net_votes: int


def held_out(caption: str, fraction: float) -> bool:
    """A deterministic split by prompt: the same prompt is always on the same side, in every run."""
    digest = hashlib.sha256(" ".join(caption.lower().split()).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
