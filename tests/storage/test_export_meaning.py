"""What export rows mean to a trainer (issue: exports that train the right thing and publish nothing else)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from storage.export_repo import commit_export
from storage.exports import ExportFilters, winner_side
from storage.journal import Journal
from tests.oxen_reader import committed_tree
from tests.storage.export_log import ANN, BEN, CAT, EVA, T0, USERS, P, Rounds, add_round, export, rows, vote

PAIRS, VOTER_PAIRS = "pairs/train-00000-of-00001.parquet", "voter_pairs/train-00000-of-00001.parquet"


def test_winner_sits_on_either_side_about_half_the_time(journal: Journal, data_dir: Path, tmp_path: Path) -> None:
    """Over many pairs the winner is image 0 in 40-60 % of rows, and label_0 always names the voted image."""
    rng = random.Random(7)
    picks = {}
    for i in range(60):
        rid = add_round(journal, data_dir, f"prompt {i}", ANN, T0 + i, round_id=f"r{i:04d}")
        picks[rid] = rng.randint(1, 4)
        vote(journal, rid, picks[rid], BEN)
    result = export(journal, data_dir, tmp_path, formats=("pairs",))
    table = rows(result, PAIRS)
    assert len(table) == 180  # 3 losers per round
    first = sum(row["label_0"] == 1.0 for row in table) / len(table)
    assert 0.4 <= first <= 0.6, first
    for row in table:
        winner = row["image_0_uid"] if row["label_0"] == 1.0 else row["image_1_uid"]
        assert winner == row["best_image_uid"] == f"{row['round_id']}-{picks[row['round_id']]}"
        assert row["label_0"] + row["label_1"] == 1.0
    # The draw is a property of the pair, not of the export: a second export places every winner alike.
    (tmp_path / "again").mkdir()
    again = rows(export(journal, data_dir, tmp_path / "again", formats=("pairs",)), PAIRS)
    assert [r["label_0"] for r in again] == [r["label_0"] for r in table]
    assert winner_side("a-1", "a-2") in (0, 1)


def test_voter_pairs_carry_the_voter_and_pairs_the_aggregate(journal: Journal, data_dir: Path, tmp_path: Path,
                                                             log: Rounds) -> None:
    """voter_pairs: one row per voter and pair with that voter's pseudonym; pairs: user_id null, a card that says so."""
    result = export(journal, data_dir, tmp_path, formats=("pairs", "voter_pairs"))
    per_voter = rows(result, VOTER_PAIRS)
    lighthouse = [r for r in per_voter if r["round_id"] == log["lighthouse"]]
    # ANN and BEN picked 1, CAT picked 2 (3 pairs each); EVA said "none is good" (no pair); DAN opted out.
    by_user = {u: sorted(r["best_image_uid"][-1] for r in lighthouse if r["user_id"] == P(u)) for u in USERS}
    assert by_user[ANN] == by_user[BEN] == ["1"] * 3 and by_user[CAT] == ["2"] * 3 and not by_user[EVA]
    assert all(r["voters"] == 1 and r["margin"] == 1 and r["winner_share"] == 1.0 for r in per_voter)
    assert {r["user_id"] for r in rows(result, PAIRS)} == {None}
    card = (result.folder / "README.md").read_text()
    assert "an aggregate: `user_id` is null" in card and "one person's choice" in card


def test_edit_rounds_make_no_caption_pairs_unless_asked(journal: Journal, data_dir: Path, tmp_path: Path,
                                                        log: Rounds) -> None:
    """The inpainted round's caption is the reply: absent from pairs and kto unless include_edit_rounds."""
    plain = export(journal, data_dir, tmp_path, formats=("pairs", "voter_pairs", "kto"))
    for table in (PAIRS, VOTER_PAIRS):
        assert {r["mode"] for r in rows(plain, table)} == {"text2img"}
        assert log["snowy"] not in {r["round_id"] for r in rows(plain, table)}
    assert log["snowy"] not in {r["round_id"] for r in rows(plain, "kto/train-00000-of-00001.parquet")}
    assert '"left_out"' in (plain.folder / "export.json").read_text()
    (tmp_path / "asked").mkdir()
    asked = export(journal, data_dir, tmp_path / "asked", formats=("pairs",),
                   filters=ExportFilters(include_edit_rounds=True))
    assert {r["mode"] for r in rows(asked, PAIRS) if r["round_id"] == log["snowy"]} == {"inpaint"}


def test_every_format_loads_by_name_with_datasets(journal: Journal, data_dir: Path, tmp_path: Path,
                                                  log: Rounds) -> None:
    """load_dataset(folder, "<format>") reads that format's train split, kto's images decoded."""
    import datasets

    result = export(journal, data_dir, tmp_path)
    cache = str(tmp_path / "hf-cache")
    assert result.counts["arena"] == 0 and "config_name: arena" not in (result.folder / "README.md").read_text()
    for fmt, expected in result.counts.items():
        if fmt == "arena":  # no arena rounds in this log
            continue
        ds = datasets.load_dataset(str(result.folder), fmt, split="train", cache_dir=cache)
        assert len(ds) == expected, fmt
    kto = datasets.load_dataset(str(result.folder), "kto", split="train", cache_dir=cache)
    assert len(kto) == result.counts["kto"] == 12
    lighthouse = {r["candidate"]: (r["label"], r["reason"]) for r in kto if r["round_id"] == log["lighthouse"]}
    # ANN and BEN picked 1, CAT 2, EVA "none is good": net [1, 0, -1, -1].
    assert lighthouse == {1: (1, "picked"), 2: (0, "rejected"), 3: (0, "rejected"), 4: (0, "rejected")}
    fox = {r["candidate"]: (r["label"], r["reason"]) for r in kto if r["round_id"] == log["fox"]}
    assert fox == {1: (0, "not_picked"), 2: (0, "not_picked"), 3: (1, "picked"), 4: (1, "picked")}
    first = next(r for r in kto if r["round_id"] == log["fox"] and r["candidate"] == 3)
    assert first["image"].size == (16, 16) and first["image"].convert("RGB").getpixel((8, 8)) == (0, 0, 255)


def test_no_absolute_path_in_any_export_file(journal: Journal, data_dir: Path, tmp_path: Path) -> None:
    """A round made from a local checkpoint is exported with the folder's name, never the operator's path."""
    rid = add_round(journal, data_dir, "a kite", ANN, T0, model_id="/home/operator/checkpoints/community-sd")
    vote(journal, rid, 2, BEN)
    result = export(journal, data_dir, tmp_path)
    assert {r["model_id"] for r in rows(result, "ratings/train.parquet")} == {"community-sd"}
    assert {r["model_0"] for r in rows(result, PAIRS)} == {"community-sd"}
    for path in (p for p in result.folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for secret in (b"/home/operator", str(data_dir).encode(), str(tmp_path).encode()):
            assert secret not in data, (path, secret)


@pytest.mark.slow
def test_the_committed_export_holds_the_export_and_nothing_else(journal: Journal, data_dir: Path, tmp_path: Path,
                                                                log: Rounds) -> None:
    """The export's Oxen repository (read back with the oxen package): its tree is exactly the export folder,
    its history one commit; committing again answers with the same commit."""
    result = export(journal, data_dir, tmp_path)
    outcome = commit_export(result.folder, "refinery-test", config_dir=data_dir / ".oxen-config")
    assert "error" not in outcome, outcome
    tree = committed_tree(result.folder)
    on_disk = {p.relative_to(result.folder).as_posix() for p in result.files}
    assert set(tree["files"]) == on_disk and not any(f.startswith(("tables/", "exports/")) for f in tree["files"])
    assert len(tree["log"]) == 1 and tree["log"][0].startswith("refinery export refinery-test: 16 ratings")
    for removed in ("storm", "gore", "dan", "quiet"):  # flagged, removed, opted-out, unvoted: not in the tree
        assert not any(log[removed] in f for f in tree["files"])
    assert commit_export(result.folder, "refinery-test")["commit_id"] == outcome["commit_id"]
