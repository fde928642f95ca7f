"""Who asked for a job and where to answer: kept with the job in the queue, so that a bot restarted
while the job waited in Redis still answers it, on the same acknowledgement message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.requests import GenerationRequest, GenerationResult
from storage.records import Round


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
    owner: str = ""  # the bot installation that answers it (several bots may share one Redis queue)
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
        return cls(origin=origin, ack_message_id=int(data["ack_message_id"]), owner=str(data.get("owner", "")),
                   note=data.get("note"),
                   spoiler=bool(data.get("spoiler", False)), lineage=dict(data.get("lineage") or {}))

    def round_record(self, round_id: str, request: GenerationRequest, result: GenerationResult,
                     image_paths: tuple[str, ...], *, mask_path: str | None, queued_s: float) -> Round:
        """The journal's record of the round this ticket's job made (with its lineage, if a refinement)."""
        lineage: dict[str, Any] = dict(self.lineage)
        if lineage:
            lineage["strength"] = request.strength if request.init_image else None
            lineage["mask_path"] = mask_path
        origin = self.origin
        return Round(
            round_id=round_id, prompt=request.prompt, negative_prompt=request.negative_prompt,
            mode=request.mode.value, steps=request.steps, guidance=request.guidance, width=request.width,
            height=request.height, seeds=result.seeds, model_id=result.model_id,
            model_revision=result.model_revision, scheduler=result.scheduler, image_paths=image_paths,
            requester_id=origin.user_id, guild_id=origin.guild_id, channel_id=origin.channel_id,
            source=origin.source, queued_s=round(queued_s, 4), generate_s=round(result.elapsed_s, 4), **lineage,
            adapter=request.adapter.label if request.adapter is not None else None,
            arms="".join("a" if arm else "b" for arm in request.arms) if request.arms else None,
            shown_seed=request.shown_seed,
        )
