"""A synthetic community written straight into the journal: reddish candidates always win over bluish ones.

Each round has two reddish and two bluish candidates (shades and noise drawn from a seeded RNG, so the
images differ); every voter picks the reddish ones. Also, so that selection has something to leave
out: an inpainting round with votes, a flagged round, and a user who ran /forget-me.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from storage.images import ImageStore
from storage.journal import Journal
from storage.records import ModerationAction, Round, VoteEvent, new_id

VOTERS = (411111111111111111, 422222222222222222, 433333333333333333)
FORGOTTEN = 444444444444444444
PROMPTS = ("a lighthouse", "a fox in snow", "a city at night", "a bowl of fruit", "a mountain lake", "a robot",
           "an old car", "a castle", "a sailing ship", "a forest path", "a teapot", "a desert road")


@dataclass(frozen=True)
class Community:
    rounds: tuple[str, ...]  # the rounds a trainer may use
    inpaint_round: str
    flagged_round: str


def colour_png(rng: random.Random, reddish: bool, size: int = 64) -> bytes:
    base = (rng.randint(170, 235), rng.randint(20, 80), rng.randint(20, 80))
    if not reddish:
        base = (base[2], base[1], base[0])
    image = Image.new("RGB", (size, size), base)
    pixels = image.load()
    for _ in range(size * 4):  # a little texture, so no two candidates are identical
        x, y = rng.randrange(size), rng.randrange(size)
        pixels[x, y] = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in base)  # type: ignore[index]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _round(journal: Journal, store: ImageStore, rng: random.Random, prompt: str, at: float, *,
           mode: str = "text2img") -> str:
    rid = new_id()
    # Candidates 1 and 3 are reddish, 2 and 4 bluish: the winners sit in both halves of the message.
    paths = store.save_round(rid, tuple(colour_png(rng, k in (1, 3)) for k in range(1, 5)))
    journal.append(Round(
        round_id=rid, prompt=prompt, negative_prompt="", mode=mode, steps=4, guidance=7.5, width=64, height=64,
        seeds=(1, 2, 3, 4), model_id="tiny-sd", model_revision="sha256:0", scheduler="ddim", image_paths=paths,
        requester_id=VOTERS[0], guild_id=None, channel_id=7, source="slash", queued_s=0.0, generate_s=0.1,
        created_at=at))
    return rid


def build_community(journal: Journal, data_dir: Path, *, rounds_per_prompt: int = 2, seed: int = 0) -> Community:
    rng, store = random.Random(seed), ImageStore(data_dir)
    used: list[str] = []
    at = 1_767_312_000.0
    for repeat in range(rounds_per_prompt):
        for prompt in PROMPTS:
            at += 60
            rid = _round(journal, store, rng, prompt if repeat == 0 else f"{prompt}, again", at)
            used.append(rid)
            for user in VOTERS[: 1 + rng.randrange(len(VOTERS))]:
                for k in (1, 3):
                    journal.append(VoteEvent(new_id(), rid, k, user, f"{k}", "add", None, 7, 1))
            # a forgotten user votes the other way: their votes must not count
            journal.append(VoteEvent(new_id(), rid, 2, FORGOTTEN, "2", "add", None, 7, 1))
    inpaint = _round(journal, store, rng, "a sunset", at + 60, mode="inpaint")
    flagged = _round(journal, store, rng, "a flagged thing", at + 120)
    for rid in (inpaint, flagged):
        journal.append(VoteEvent(new_id(), rid, 2, VOTERS[0], "2", "add", None, 7, 1))
    journal.append(ModerationAction(new_id(), "flag", VOTERS[1], flagged, None, "test"))
    journal.append(ModerationAction(new_id(), "forget_me", FORGOTTEN, None, FORGOTTEN, "/forget-me"))
    return Community(tuple(used), inpaint, flagged)
