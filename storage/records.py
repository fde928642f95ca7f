"""The records Refinery keeps. Append-only: a change is a new record, never an edit of an old one.

Every record is a frozen dataclass with `kind` (its table name), `to_dict` and `from_dict`; the
journal stores them as JSON and the Oxen writer turns each kind into its own table of shards.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Self


def new_id() -> str:
    """A short, unique, URL-safe id for rounds and events."""
    return uuid.uuid4().hex[:12]


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class Record:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**values)


@dataclass(frozen=True)
class Round(Record):
    """One answer of four candidates: what was asked, how it was made, where the images are."""

    kind: ClassVar[str] = "rounds"

    round_id: str
    prompt: str
    negative_prompt: str
    mode: str
    steps: int
    guidance: float
    width: int
    height: int
    seeds: tuple[int, ...]
    model_id: str
    model_revision: str
    scheduler: str
    image_paths: tuple[str, ...]  # relative to the data directory: images/<round_id>/<k>.png
    requester_id: int
    guild_id: int | None
    channel_id: int
    source: str  # "slash", "message", "reply", "button"
    queued_s: float
    generate_s: float
    parent_round_id: str | None = None
    parent_candidate: int | None = None  # 1-based
    instruction: str | None = None
    plan: str | None = None  # JSON of the refinement planner's decision
    mask_path: str | None = None
    strength: float | None = None
    created_at: float = field(default_factory=now)
    adapter: str | None = None  # the LoRA it used, "name@sha256:<12 hex>"; None = the base model alone
    # An arena round: per candidate "a" (adapter) or "b" (base), the logged random draw; None otherwise.
    arms: str | None = None
    # An arena round: the seed its message shows; `seeds` are the secret ones that made the candidates, never
    # shown (the shown seed reproduces neither arm). None: the round shows its own seeds.
    shown_seed: int | None = None

    @property
    def shown_seeds(self) -> tuple[int, ...]:
        """The seeds members may know, one per candidate: what a refinement may build on and show again."""
        if self.shown_seed is None:
            return self.seeds
        return tuple((self.shown_seed + k) % 2**32 for k in range(len(self.seeds)))  # as consecutive_seeds


@dataclass(frozen=True)
class RoundPosted(Record):
    """The Discord message that shows a round: the key for votes, replies and buttons."""

    kind: ClassVar[str] = "round_messages"

    round_id: str
    message_id: int
    channel_id: int
    guild_id: int | None
    created_at: float = field(default_factory=now)


VOTE_SOURCES = ("gateway", "reconciled")  # how a vote event was seen (VoteEvent.source)


@dataclass(frozen=True)
class VoteEvent(Record):
    """A reaction added or removed on a round's message. `candidate` is 1-4, or 0 for "none is good"."""

    kind: ClassVar[str] = "votes"

    event_id: str
    round_id: str
    candidate: int
    user_id: int
    emoji: str
    action: str  # "add" or "remove"
    guild_id: int | None
    channel_id: int
    message_id: int
    created_at: float = field(default_factory=now)
    # "gateway": a live reaction event; "reconciled": a difference found by comparing the round's
    # reactions on Discord with the journal after the bot was away (journal rows without it are live).
    source: str = "gateway"


@dataclass(frozen=True)
class RefinementRequest(Record):
    """A reply or button that asked for a child round."""

    kind: ClassVar[str] = "refinements"

    event_id: str
    parent_round_id: str
    parent_candidate: int | None
    user_id: int
    instruction: str
    plan: str  # JSON of the planner's decision
    channel_id: int
    message_id: int
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class ModerationAction(Record):
    kind: ClassVar[str] = "moderation"

    event_id: str
    action: str  # "flag", "remove", "refuse", "forget_me", ...
    moderator_id: int
    round_id: str | None
    target_user_id: int | None
    reason: str
    created_at: float = field(default_factory=now)


@dataclass(frozen=True)
class UserError(Record):
    """An error message the bot showed to a user."""

    kind: ClassVar[str] = "errors"

    event_id: str
    user_id: int
    channel_id: int
    error: str
    message: str
    created_at: float = field(default_factory=now)


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (Round, RoundPosted, VoteEvent, RefinementRequest, ModerationAction, UserError)
}
