"""Who asked for a job and where to answer: kept with the job in the queue, so that a bot restarted
while the job waited in Redis still answers it, on the same acknowledgement message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Origin:
    """Who asked, and where."""

    user_id: int
    channel_id: int
    guild_id: int | None
    source: str  # "slash", "message", "reply", "button"
    nsfw_channel: bool = False  # the channel is marked NSFW in Discord


@dataclass(frozen=True)
class Ticket:
    """Everything answering a job needs besides the job's request and result."""

    origin: Origin
    ack_message_id: int  # the acknowledgement in origin.channel_id that becomes the round; 0 = none
    note: str | None = None  # shown above a refinement's round ("🔧 ...")
    spoiler: bool = False  # decided at submission by the NSFW prompt list
    # For a refinement: parent_round_id, parent_candidate, instruction, plan (the Round's lineage fields).
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ticket:
        """Raises KeyError/TypeError/ValueError on a dict that is not a ticket (e.g. another tool's meta)."""
        origin = Origin(**data["origin"])
        return cls(origin=origin, ack_message_id=int(data["ack_message_id"]), note=data.get("note"),
                   spoiler=bool(data.get("spoiler", False)), lineage=dict(data.get("lineage") or {}))
