"""Training examples chosen from the log: what `refinery train` learns from.

The selection itself (which rounds, which votes) is the export code's (`storage.exports`), so a
trained adapter and an exported dataset always agree on what the community said. This module holds
the shapes that cross from storage into the trainer (`pipeline.training`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.exports import ExportFilters, Selection, decided_pairs, replay
from storage.journal import Journal


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


def _prompt(caption: str) -> str:
    """The held-out split's unit: a prompt, whatever its case and spacing."""
    return " ".join(caption.lower().split())


def _position(prompt: str) -> float:
    """Where a prompt falls in [0, 1), the same in every run."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64


def held_out(caption: str, fraction: float) -> bool:
    """A deterministic split by prompt: the same prompt is always on the same side, in every run."""
    return _position(_prompt(caption)) < fraction


Example = PreferencePair | FeedbackImage


@dataclass(frozen=True)
class TrainingData:
    """The examples one training run learns from, split by prompt, and an account of what was left out."""

    method: str  # "dpo" or "kto"
    train: tuple[Example, ...]
    held_out: tuple[Example, ...]
    journal_seq: int  # the log as of this event
    rounds_used: int
    left_out: dict[str, int]  # rounds (or, for KTO, images) not used, by reason

    def summary(self) -> dict[str, Any]:
        desirable = sum(isinstance(e, FeedbackImage) and e.desirable for e in (*self.train, *self.held_out))
        return {"method": self.method, "train_examples": len(self.train), "held_out_examples": len(self.held_out),
                "journal_seq": self.journal_seq, "rounds_used": self.rounds_used, "left_out": self.left_out,
                **({"desirable": desirable, "undesirable": len(self.train) + len(self.held_out) - desirable}
                   if self.method == "kto" else {})}


def select_examples(journal: Journal, data_dir: Path, filters: ExportFilters, method: str, *,
                    held_out_fraction: float = 0.1, through_seq: int | None = None) -> TrainingData:
    """DPO: per round, a candidate its voters preferred to another (aggregated, ties dropped); KTO: every
    image of a voted round, desirable when its net votes are positive. Only rounds whose prompt made
    their images (text-to-image, rerolls, conditioning refinements); the exports' exclusions hold.
    `through_seq` reads the log as it was at that event (a resumed run trains on the data it started with)."""
    if method not in ("dpo", "kto"):
        raise ValueError(f"method must be 'dpo' or 'kto', got {method!r}")
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    state = replay(journal, through_seq)
    selection = Selection(state, Path(data_dir), filters)
    examples: list[Example] = []
    rounds_used = 0
    for rnd in selection.rounds():
        if not selection.usable(rnd):
            continue
        voters = selection.voters_of(rnd)
        if not voters:
            selection.left_out["no votes"] += 1
            continue
        if not selection.captioned(rnd):
            selection.left_out[f"{rnd.mode} round: its prompt is the reply, not a caption"] += 1
            continue
        paths = [selection.data_dir / p for p in rnd.image_paths]
        before = len(examples)
        if method == "dpo":
            examples += [PreferencePair(rnd.prompt, paths[w - 1], paths[lose - 1], rnd.round_id, nw - nl)
                         for w, lose, nw, nl in decided_pairs(voters, len(paths))]
            if len(examples) == before:
                selection.left_out["no decided pair (ties, or only ❌)"] += 1
        else:
            net = Selection.net_votes(voters, len(paths))
            examples += [FeedbackImage(rnd.prompt, path, votes > 0, rnd.round_id, votes)
                         for path, votes in zip(paths, net, strict=True)]
        rounds_used += len(examples) > before
    train, held = _split(examples, held_out_fraction)
    return TrainingData(method, tuple(train), tuple(held), state.last_seq, rounds_used,
                        dict(sorted(selection.left_out.items())))


def _split(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Held out by prompt; with few prompts, at least the one that falls lowest (if there are two or more)."""
    if fraction == 0:
        return examples, []
    prompts = {_prompt(e.caption) for e in examples}
    held = {p for p in prompts if _position(p) < fraction}
    if not held and len(prompts) >= 2:
        held = {min(prompts, key=_position)}
    return ([e for e in examples if _prompt(e.caption) not in held],
            [e for e in examples if _prompt(e.caption) in held])
