"""The export formats: one `Format` object each (name, file, columns, rules, rows), in one registry.

The CLI, the slash command, the dataset card and the Hugging Face `configs:` header all read
`REGISTRY`; adding a format is adding one object here.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from storage.exports._selection import NONE_IS_GOOD, candidate_model, decided_pairs, round_comparisons

if TYPE_CHECKING:
    from storage.exports._build import Builder, RoundView

_S, _I, _F, _B, _BYTES = pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.binary()
# Hugging Face `datasets`' Image feature as Arrow stores it: the file's bytes and a name.
_IMAGE = pa.struct([("bytes", _BYTES), ("path", _S)])
Column = tuple[str, pa.DataType, str]


@dataclass(frozen=True)
class Format:
    name: str
    file: str  # the table, relative to the export folder
    columns: tuple[Column, ...]
    rules: str  # what a row is and which rounds make rows: the dataset card's paragraph
    rows: Callable[[Builder, RoundView], int]  # adds the round's rows, returns how many
    data_files: str  # for the card's `configs:` header (load_dataset(folder, name))

    @property
    def schema(self) -> pa.Schema:
        """The table's Arrow schema. Image columns carry `datasets`' feature in the schema's metadata, as
        `datasets` itself writes it, so that load_dataset decodes them into images."""
        schema = pa.schema([(n, t) for n, t, _ in self.columns])
        images = {n: {"_type": "Image"} for n, t, _ in self.columns if t == _IMAGE}
        if not images:
            return schema
        return schema.with_metadata({"huggingface": json.dumps({"info": {"features": images}})})


def winner_side(winner_uid: str, loser_uid: str, salt: str = "") -> int:
    """0 or 1: where a pair's winner goes, drawn per pair from its content (stable across exports) so that
    a model trained on the pairs cannot learn "the first image wins"."""
    return hashlib.sha256(f"{winner_uid}>{loser_uid}|{salt}".encode()).digest()[0] & 1


def ranking_id(round_id: str) -> int:
    # Pick-a-Pic's ranking_id is an int64: new_id()'s 12 hex digits map to one exactly; others are hashed.
    if re.fullmatch(r"[0-9a-f]{1,15}", round_id):
        return int(round_id, 16)
    return int.from_bytes(uuid.uuid5(uuid.NAMESPACE_OID, round_id).bytes[:8], "big") >> 1


# -- rows -----------------------------------------------------------------------------------------------
def _ratings(b: Builder, v: RoundView) -> int:
    if not v.voters:  # an unvoted round says nothing about its images
        return 0
    for k, (path, votes) in enumerate(zip(b.copy_round(v.rnd), v.net, strict=True), start=1):
        b.add("ratings", {
            "prompt": v.prompt, "path": path, "rating": "good" if votes > 0 else "bad", "round_id": v.rnd.round_id,
            "candidate": k, "net_votes": votes, "mode": v.rnd.mode, "model_id": candidate_model(v.rnd, k),
            "seed": v.rnd.seeds[k - 1] if k <= len(v.rnd.seeds) else None})
    return v.n


def _pair(b: Builder, v: RoundView, w: int, lose: int, nw: int, nl: int, user: str | None) -> dict[str, Any]:
    rid = v.rnd.round_id
    uid_w, uid_l = f"{rid}-{w}", f"{rid}-{lose}"
    side = winner_side(uid_w, uid_l, user or "")
    first, second = (w, lose) if side == 0 else (lose, w)
    return {"caption": v.prompt, "jpg_0": b.jpeg(v.rnd, first), "jpg_1": b.jpeg(v.rnd, second),
            "label_0": float(side == 0), "label_1": float(side == 1),
            "image_0_uid": f"{rid}-{first}", "image_1_uid": f"{rid}-{second}",
            "model_0": candidate_model(v.rnd, first), "model_1": candidate_model(v.rnd, second),
            "user_id": user, "ranking_id": ranking_id(rid), "created_at": v.created, "are_different": True,
            "best_image_uid": uid_w, "has_label": True, "mode": v.rnd.mode, "round_id": rid,
            "voters": nw + nl, "margin": nw - nl, "winner_share": nw / (nw + nl)}


def _pairs(b: Builder, v: RoundView) -> int:
    if not b.selection.captioned(v.rnd):
        b.skipped["pairs: edit rounds (instruct/inpaint), see edit_pairs"] += 1
        return 0
    rows = [_pair(b, v, w, lose, nw, nl, None) for w, lose, nw, nl in decided_pairs(v.voters, v.n)]
    for row in rows:
        b.add("pairs", row)
    return len(rows)


def _voter_pairs(b: Builder, v: RoundView) -> int:
    if not b.selection.captioned(v.rnd):
        return 0
    count = 0
    for user in sorted(v.voters, key=b.pseudo.user):  # pseudonym order leaks no id order
        for w, lose, nw, nl in decided_pairs({user: v.voters[user]}, v.n):
            b.add("voter_pairs", _pair(b, v, w, lose, nw, nl, b.pseudo.user(user)))
            count += 1
    return count


def _rankings(b: Builder, v: RoundView) -> int:
    if v.n != 4:
        return 0
    uids = {f"image_{k}_uid": f"{v.rnd.round_id}-{k}" for k in range(1, 5)}
    rows = [{"prompt": v.prompt, **uids, "best_image_uid": f"{v.rnd.round_id}-{min(chosen)}",
             "user_id": b.pseudo.user(user), "round_id": v.rnd.round_id}
            for user, chosen in v.voters.items() if len(chosen) == 1 and NONE_IS_GOOD not in chosen]
    for row in sorted(rows, key=lambda r: r["user_id"]):
        b.copy_round(v.rnd)  # copies each file only once
        b.add("rankings", row)
    return len(rows)


def _kto(b: Builder, v: RoundView) -> int:
    if not v.voters or not b.selection.captioned(v.rnd):
        return 0
    rejected = b.selection.rejected_by_none(v.voters)
    for k, net in enumerate(v.net, start=1):
        picked = sum(k in chosen for chosen in v.voters.values())
        reason = "picked" if net > 0 else "rejected" if rejected else "not_picked"
        image = {"bytes": b.png(v.rnd, k), "path": f"{v.rnd.round_id}-{k}.png"}
        b.add("kto", {"image": image, "caption": v.prompt, "label": int(net > 0),
                      "reason": reason, "picks": picked, "net_votes": net, "round_id": v.rnd.round_id,
                      "candidate": k, "mode": v.rnd.mode, "model_id": candidate_model(v.rnd, k)})
    return v.n


def _edits(b: Builder, v: RoundView) -> int:
    edit = b.edit_source(v)
    if edit is None:
        return 0
    parent, source, mask = edit
    b.add("edits", {
        "round_id": v.rnd.round_id, "parent_round_id": parent.round_id, "parent_candidate": v.rnd.parent_candidate,
        "source_image": source, "prompt": v.prompt, "instruction": b.pseudo.scrub(v.rnd.instruction),
        "mode": v.rnd.mode, "mask": mask, "result_images": b.copy_round(v.rnd), "result_votes": v.net,
        "plan": b.pseudo.scrub(v.rnd.plan)})
    return 1


def _edit_pairs(b: Builder, v: RoundView) -> int:
    edit = b.edit_source(v)
    if edit is None or v.rnd.parent_candidate is None or not v.voters:
        return 0
    parent, _, mask = edit
    rid, count = v.rnd.round_id, 0
    for w, lose, nw, nl in decided_pairs(v.voters, v.n):
        side = winner_side(f"{rid}-{w}", f"{rid}-{lose}")
        first, second = (w, lose) if side == 0 else (lose, w)
        b.add("edit_pairs", {
            "instruction": b.pseudo.scrub(v.rnd.instruction), "source_jpg": b.jpeg(parent, v.rnd.parent_candidate),
            "jpg_0": b.jpeg(v.rnd, first), "jpg_1": b.jpeg(v.rnd, second), "label_0": float(side == 0),
            "label_1": float(side == 1), "mask_png": b.read(mask) if mask else None, "mode": v.rnd.mode,
            "prompt": v.prompt, "source_image_uid": f"{parent.round_id}-{v.rnd.parent_candidate}",
            "image_0_uid": f"{rid}-{first}", "image_1_uid": f"{rid}-{second}",
            "best_image_uid": f"{rid}-{w}", "round_id": rid, "parent_round_id": parent.round_id,
            "voters": nw + nl, "margin": nw - nl, "winner_share": nw / (nw + nl)})
        count += 1
    return count


def _arena(b: Builder, v: RoundView) -> int:
    if not v.rnd.arms or not v.rnd.adapter:
        return 0
    found = round_comparisons(v.rnd, v.voters)
    for c in sorted(found, key=lambda c: (b.pseudo.user(c.voter), c.adapter_position, c.base_position)):
        first, second = sorted((c.adapter_position, c.base_position))  # image 0 is the one shown first
        winner = c.adapter_position if c.adapter_won else c.base_position
        b.add("arena", {
            "caption": v.prompt, "jpg_0": b.jpeg(v.rnd, first), "jpg_1": b.jpeg(v.rnd, second),
            "label_0": float(winner == first), "label_1": float(winner == second),
            "model_0": candidate_model(v.rnd, first), "model_1": candidate_model(v.rnd, second),
            "adapter_image": int(c.adapter_position == second), "winner": "adapter" if c.adapter_won else "base",
            "user_id": b.pseudo.user(c.voter), "round_id": v.rnd.round_id, "position_0": first,
            "position_1": second, "adapter": v.rnd.adapter, "created_at": v.created})
    return len(found)


# -- the registry ---------------------------------------------------------------------------------------
_PAIR_COLUMNS: tuple[Column, ...] = (
    ("caption", _S, "the prompt that made both images"),
    ("jpg_0", _BYTES, "JPEG bytes (quality 95) of image 0"),
    ("jpg_1", _BYTES, "JPEG bytes of image 1"),
    ("label_0", _F, "1.0 if image 0 was preferred, else 0.0 (the winner's side is a per-pair draw)"),
    ("label_1", _F, "1 - label_0"),
    *((f"image_{i}_uid", _S, f"<round_id>-<k> of image {i}") for i in (0, 1)),
    *((f"model_{i}", _S, f"model of image {i}: a hub id, or a local checkpoint's folder name") for i in (0, 1)),
    ("user_id", _S, "see the paragraph above: null (a round's aggregate) or the voter's pseudonym"),
    ("ranking_id", _I, "the round id read as a hexadecimal integer"),
    ("created_at", pa.timestamp("ns"), "when the round was made (UTC, no zone, as in Pick-a-Pic)"),
    ("are_different", _B, "always true: two different candidates"),
    ("best_image_uid", _S, "uid of the preferred image"),
    ("has_label", _B, "always true"),
    ("mode", _S, "how the round was made: text2img or img2img (a conditioning refinement)"),
    ("round_id", _S, "the round"),
    ("voters", _I, "voters who ranked this pair (picked exactly one of the two)"),
    ("margin", _I, "voters for the winner minus voters for the loser (> 0)"),
    ("winner_share", _F, "voters for the winner / voters (> 0.5): the soft label, kept apart from label_0"),
)
_PAIR_RULE = (" Only rounds whose caption is the prompt that made the images: text-to-image rounds, rerolls and "
              "conditioning refinements (img2img, prompt = the parent's prompt with the instruction). Instruction "
              "edits and inpaintings are in `edit_pairs`. The winner's side (0 or 1) is drawn per pair, so it is "
              "image 0 about half the time; diffusers' Diffusion-DPO script reads `caption`, `jpg_0`, `jpg_1` and "
              "`label_0` (`--dataset_split_name train`).")

FORMATS_IN_ORDER: tuple[Format, ...] = (
    Format("ratings", "ratings/train.parquet", (
        ("prompt", _S, "the prompt"),
        ("path", _S, "the image, relative to the export folder: images/<round_id>/<k>.png"),
        ("rating", _S, '"good" if net_votes > 0, else "bad"'),
        ("round_id", _S, "the round"),
        ("candidate", _I, "candidate number k, 1-4"),
        ("net_votes", _I, 'voters who picked this candidate minus voters who picked "none is good"'),
        ("mode", _S, "how the round was made: text2img, img2img, instruct or inpaint"),
        ("model_id", _S, "model that made the image: a hub id, or a local checkpoint's folder name"),
        ("seed", _I, "the candidate's seed"),
    ), "One row per candidate of every exported round with at least one voter (also as ratings/train.csv); every "
       "mode, with a `mode` column (an instruct or inpaint round's prompt is the reply, not a description).",
       _ratings, "ratings/train.parquet"),
    Format("pairs", "pairs/train-00000-of-00001.parquet", _PAIR_COLUMNS,
           "**One row per round and pair of candidates (an aggregate: `user_id` is null).** For each voter, a "
           "candidate they picked beats one of the round they did not pick; these are summed over the round's "
           "voters per pair, and ties are dropped." + _PAIR_RULE, _pairs, "pairs/train-*.parquet"),
    Format("voter_pairs", "voter_pairs/train-00000-of-00001.parquet", _PAIR_COLUMNS,
           "**One row per voter and pair (Pick-a-Pic's unit: one person's choice; `user_id` is the voter's "
           "pseudonym).** A candidate the voter picked beats one of the same round they did not pick." + _PAIR_RULE,
           _voter_pairs, "voter_pairs/train-*.parquet"),
    Format("rankings", "rankings/train.parquet", (
        ("prompt", _S, "the prompt"),
        *((f"image_{k}_uid", _S, f"<round_id>-{k}: the file images/<round_id>/{k}.png") for k in range(1, 5)),
        ("best_image_uid", _S, "uid of the one candidate this user voted for"),
        ("user_id", _S, "pseudonym of the voter"),
        ("round_id", _S, "the round"),
    ), "One row per (round, voter) whose final votes name exactly one candidate of a four-candidate round; "
       'several picks (see pairs) or only "none is good" (see ratings) give no row.', _rankings,
       "rankings/train.parquet"),
    Format("kto", "kto/train-00000-of-00001.parquet", (
        ("image", _IMAGE, "the candidate's PNG (bytes and a name, `<round_id>-<k>.png`): `datasets` decodes it "
                          "into an image"),
        ("caption", _S, "the prompt that made the image"),
        ("label", _I, "1: desirable (net_votes > 0), 0: undesirable"),
        ("reason", _S, 'picked (label 1); rejected (a voter of the round said "none is good" and net_votes <= 0); '
                       "not_picked (the round's voters picked other candidates, nobody rejected it)"),
        ("picks", _I, "voters who picked this image"),
        ("net_votes", _I, 'picks minus voters who said "none is good"'),
        ("round_id", _S, "the round"),
        ("candidate", _I, "candidate number k, 1-4"),
        ("mode", _S, "text2img or img2img"),
        ("model_id", _S, "model that made the image"),
    ), "One row per image of every exported, captioned round with at least one voter: per-image binary feedback "
       "for Diffusion-KTO (the second seed document's 👍/👎 shape); the image is in the row, as in the pair "
       "formats. Undesirable means never picked by the round's voters, or rejected with ❌; the `reason` column "
       "says which. The classes are unbalanced: sample them evenly when training.", _kto,
       "kto/train-*.parquet"),
    Format("edits", "edits/train.parquet", (
        ("round_id", _S, "the refinement (child) round"),
        ("parent_round_id", _S, "the round it refines"),
        ("parent_candidate", _I, "the refined candidate k of the parent; null if the whole round was refined"),
        ("source_image", _S, "images/<parent_round_id>/<k>.png; null when parent_candidate is null"),
        ("prompt", _S, "the child round's prompt"),
        ("instruction", _S, "the refinement text"),
        ("mode", _S, "how the child was made (the planner's mode)"),
        ("mask", _S, "images/<round_id>/mask.png for inpainting, else null"),
        ("result_images", pa.list_(_S), "the child's candidates, images/<round_id>/<k>.png in order"),
        ("result_votes", pa.list_(_I), "net votes of each result image, in the same order"),
        ("plan", _S, "JSON of the refinement planner's decision"),
    ), "One row per exported refinement round whose parent round is in the log (refinement triples).", _edits,
       "edits/train.parquet"),
    Format("edit_pairs", "edit_pairs/train-00000-of-00001.parquet", (
        ("instruction", _S, "the reply that asked for the edit"),
        ("source_jpg", _BYTES, "JPEG bytes of the edited image (the parent's candidate)"),
        ("jpg_0", _BYTES, "JPEG bytes of result image 0"),
        ("jpg_1", _BYTES, "JPEG bytes of result image 1"),
        ("label_0", _F, "1.0 if result 0 was preferred, else 0.0 (the side is a per-pair draw)"),
        ("label_1", _F, "1 - label_0"),
        ("mask_png", _BYTES, "PNG bytes of the inpainting mask (white = repainted), else null"),
        ("mode", _S, "img2img, instruct or inpaint"),
        ("prompt", _S, "the child round's prompt"),
        ("source_image_uid", _S, "<parent_round_id>-<k> of the source image"),
        *((f"image_{i}_uid", _S, f"<round_id>-<k> of result image {i}") for i in (0, 1)),
        ("best_image_uid", _S, "uid of the preferred result"),
        ("round_id", _S, "the refinement round"),
        ("parent_round_id", _S, "the round it refines"),
        ("voters", _I, "voters who ranked this pair"),
        ("margin", _I, "voters for the winner minus voters for the loser (> 0)"),
        ("winner_share", _F, "voters for the winner / voters (> 0.5)"),
    ), "Edit preferences: one row per refinement round of one chosen candidate and pair of its results the "
       "voters did not tie on (aggregated per round, as `pairs`): source image, instruction, two results, label.",
       _edit_pairs, "edit_pairs/train-*.parquet"),
    Format("arena", "arena/train-00000-of-00001.parquet", (
        ("caption", _S, "the prompt of the arena round"),
        ("jpg_0", _BYTES, "JPEG bytes of the image shown first (the lower screen position)"),
        ("jpg_1", _BYTES, "JPEG bytes of the other image"),
        ("label_0", _F, "1.0 if the voter preferred image 0, else 0.0"),
        ("label_1", _F, "1 - label_0"),
        *((f"model_{i}", _S, f"what made image {i}: the base model, or `<base>+<adapter>`") for i in (0, 1)),
        ("adapter_image", _I, "which image (0 or 1) came from the adapter"),
        ("winner", _S, '"adapter" or "base"'),
        ("user_id", _S, "pseudonym of the voter"),
        ("round_id", _S, "the arena round"),
        ("position_0", _I, "screen position (1-4) of image 0"),
        ("position_1", _I, "screen position (1-4) of image 1"),
        ("adapter", _S, "the adapter under test, name@sha256:<12 hex>"),
        ("created_at", pa.timestamp("ns"), "when the round was made (UTC, no zone)"),
    ), "Blinded A/B comparisons: one row per voter and pair of one base and one adapter candidate of an arena "
       "round (two of each, same prompt, paired seeds, positions shuffled by a logged draw) that the voter did not "
       "tie on (picked exactly one of the two).", _arena, "arena/train-*.parquet"),
)
REGISTRY: dict[str, Format] = {f.name: f for f in FORMATS_IN_ORDER}
FORMATS: tuple[str, ...] = tuple(REGISTRY)


def naive_utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)  # naive UTC, as Pick-a-Pic
