"""A hand-built interaction log for the export tests: seven users, rounds of every kind, every exclusion."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from storage.exports import FORMATS, ExportFilters, ExportResult, build_dataset
from storage.images import ImageStore
from storage.journal import Journal
from storage.pseudonyms import Pseudonymiser
from storage.records import ModerationAction, Round, VoteEvent, new_id

# Snowflake-sized ids, so finding one in an output file cannot be a coincidence.
ANN, BEN, CAT, DAN, EVA, MOD = (311111111111111111, 322222222222222222, 333333333333333333,
                                344444444444444444, 355555555555555555, 366666666666666666)
USERS = (ANN, BEN, CAT, DAN, EVA, MOD)
T0 = 1_700_000_000.0
KEY = b"test-export-key"
Rounds = dict[str, str]  # the log fixture's round ids by name
COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}  # candidate k's colour


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def add_round(journal: Journal, data_dir: Path, prompt: str, requester: int, at: float, **extra: object) -> str:
    rid = str(extra.pop("round_id", "")) or new_id()
    paths = ImageStore(data_dir).save_round(rid, tuple(png(COLOURS[k]) for k in range(1, 5)))
    if extra.pop("mask", False):
        extra["mask_path"] = ImageStore(data_dir).save(rid, "mask.png", png((255, 255, 255)))
    journal.append(Round(
        round_id=rid, prompt=prompt, negative_prompt="", mode=str(extra.pop("mode", "text2img")), steps=4,
        guidance=7.5, width=16, height=16, seeds=(11, 12, 13, 14), model_id=str(extra.pop("model_id", "tiny-sd")),
        model_revision="r1", scheduler="ddim", image_paths=paths, requester_id=requester, guild_id=None,
        channel_id=int(extra.pop("channel", 7)), source="slash", queued_s=0.0, generate_s=0.1, created_at=at,
        **extra))  # type: ignore[arg-type]
    return rid


def vote(journal: Journal, rid: str, k: int, user: int, action: str = "add") -> None:
    journal.append(VoteEvent(new_id(), rid, k, user, f"{k}", action, None, 7, 555))


def moderate(journal: Journal, action: str, rid: str | None = None, user: int | None = None) -> None:
    journal.append(ModerationAction(new_id(), action, MOD, rid, user, "test"))


def build_log(journal: Journal, data_dir: Path) -> Rounds:
    """The hand-built log; returns the round ids by name."""
    r: dict[str, str] = {}
    # lighthouse: ANN 1; BEN 1 (2 retracted); CAT 2; EVA "none is good"; DAN 3 but DAN later opts out.
    r["lighthouse"] = add_round(journal, data_dir, "a lighthouse at dusk", ANN, T0)
    for k, user, action in ((1, ANN, "add"), (1, BEN, "add"), (2, BEN, "add"), (2, BEN, "remove"),
                            (2, CAT, "add"), (0, EVA, "add"), (3, DAN, "add")):
        vote(journal, r["lighthouse"], k, user, action)
    # fox (mentions ANN): ANN 3 (1 retracted), CAT 4, BEN 3 and 4 -> (3, 4) is a 1:1 tie.
    r["fox"] = add_round(journal, data_dir, f"a red fox for <@{ANN}>", BEN, T0 + 10)
    for k, user, action in ((1, ANN, "add"), (3, ANN, "add"), (1, ANN, "remove"), (4, CAT, "add"),
                            (3, BEN, "add"), (4, BEN, "add")):
        vote(journal, r["fox"], k, user, action)
    # snowy: CAT refines lighthouse candidate 1 by inpainting; ANN and BEN pick 2.
    r["snowy"] = add_round(journal, data_dir, "a lighthouse at dusk, snowy", CAT, T0 + 20,
                           mode="inpaint", mask=True, parent_round_id=r["lighthouse"], parent_candidate=1,
                           instruction=f"make it snowy like <@!{BEN}> said", plan='{"mode": "inpaint"}')
    vote(journal, r["snowy"], 2, ANN)
    vote(journal, r["snowy"], 2, BEN)
    # harbour (channel 8): flagged, then unflagged -> exported.
    r["harbour"] = add_round(journal, data_dir, "a harbour", ANN, T0 + 30, channel=8)
    vote(journal, r["harbour"], 4, BEN)
    moderate(journal, "flag", r["harbour"])
    moderate(journal, "unflag", r["harbour"])
    # storm: flagged -> only with include_flagged.
    r["storm"] = add_round(journal, data_dir, "a storm", BEN, T0 + 40)
    vote(journal, r["storm"], 1, ANN)
    moderate(journal, "flag", r["storm"])
    # gore: flagged, removed, unflagged -> never exported; nor its refinement.
    r["gore"] = add_round(journal, data_dir, "something removed", ANN, T0 + 50)
    vote(journal, r["gore"], 2, BEN)
    for action in ("flag", "remove", "unflag"):
        moderate(journal, action, r["gore"])
    r["gore2"] = add_round(journal, data_dir, "more of it", BEN, T0 + 55, mode="img2img",
                           parent_round_id=r["gore"], parent_candidate=2, instruction="more")
    vote(journal, r["gore2"], 1, CAT)
    # dan: DAN's own round, voted by ANN; DAN runs /forget-me at the end.
    r["dan"] = add_round(journal, data_dir, "dan's secret", DAN, T0 + 60)
    vote(journal, r["dan"], 1, ANN)
    # quiet: nobody votes.
    r["quiet"] = add_round(journal, data_dir, "a quiet field", CAT, T0 + 70)
    moderate(journal, "forget_me", user=DAN)
    return r


def export(journal: Journal, data_dir: Path, tmp_path: Path, filters: ExportFilters | None = None,
           formats: tuple[str, ...] = FORMATS, key: bytes = KEY) -> ExportResult:
    return build_dataset(journal, data_dir, tmp_path / "export", formats, filters or ExportFilters(),
                         Pseudonymiser(key), name="refinery-test")


def rows(result: ExportResult, relative: str) -> list[dict]:
    return pq.read_table(result.folder / relative).to_pylist()


def exported_rounds(result: ExportResult) -> set[str]:
    found = {row["round_id"] for row in rows(result, "ratings/train.parquet")}
    found |= {row["round_id"] for row in rows(result, "edits/train.parquet")}
    return found | {row["image_0_uid"].rsplit("-", 1)[0] for row in rows(result, "pairs/train-00000-of-00001.parquet")}


def mentions(folder: Path, text: str) -> bool:
    """Whether `text` is in any path or file under `folder`."""
    return any(text in str(p) or (p.is_file() and text.encode() in p.read_bytes()) for p in folder.rglob("*"))


P = Pseudonymiser(KEY).user
