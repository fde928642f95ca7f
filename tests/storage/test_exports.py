"""Dataset exports: a hand-built log (tests/storage/export_log.py) replayed into every format, row by row."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
from PIL import Image

from storage.exports import FORMATS, EmptyExportError, ExportFilters, build_dataset
from storage.journal import Journal
from storage.pseudonyms import ExportKeyMissingError, Pseudonymiser, from_secret
from tests.storage.export_log import (
    ANN,
    BEN,
    CAT,
    COLOURS,
    DAN,
    EVA,
    KEY,
    T0,
    USERS,
    P,
    Rounds,
    export,
    exported_rounds,
    mentions,
    rows,
)


def test_pseudonyms_are_keyed_hashes_stable_within_a_key() -> None:
    """u_ + the first 16 hex chars of HMAC-SHA256(key, str(id)): same key, same pseudonym; new key, new one."""
    k1, k2 = b"first-key-0123456789", b"second-key-0123456789"
    one, again, other = Pseudonymiser(k1), Pseudonymiser(k1), Pseudonymiser(k2)
    assert one.user(ANN) == "u_" + hmac.new(k1, str(ANN).encode(), hashlib.sha256).hexdigest()[:16]
    assert one.user(ANN) == again.user(ANN) == from_secret(k1.decode()).user(ANN)
    assert one.user(ANN) != other.user(ANN) and one.user(ANN) != one.user(BEN)
    assert "first-key" not in repr(one)


@pytest.mark.parametrize("secret", ["", "   "])
def test_an_empty_export_key_is_refused(secret: str) -> None:
    """No key, no export: from_secret raises a clear error."""
    with pytest.raises(ExportKeyMissingError, match="REFINERY_EXPORT_KEY"):
        from_secret(secret)
    with pytest.raises(ExportKeyMissingError):
        Pseudonymiser(b"")


def test_ratings_rows(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """net = picks - "none is good" voters; unvoted, flagged, removed and opted-out rounds are absent."""
    result = export(journal, data_dir, tmp_path)
    lh, fox, snowy, harbour = (log[k] for k in ("lighthouse", "fox", "snowy", "harbour"))
    expected = []
    for rid, prompt, nets, mode in ((lh, "a lighthouse at dusk", [1, 0, -1, -1], "text2img"),
                                    (fox, f"a red fox for @{P(ANN)}", [0, 0, 2, 2], "text2img"),
                                    (snowy, "a lighthouse at dusk, snowy", [0, 2, 0, 0], "inpaint"),
                                    (harbour, "a harbour", [0, 0, 0, 1], "text2img")):
        expected += [{"prompt": prompt, "path": f"images/{rid}/{k}.png", "rating": "good" if net > 0 else "bad",
                      "round_id": rid, "candidate": k, "net_votes": net, "mode": mode, "model_id": "tiny-sd",
                      "seed": 10 + k}
                     for k, net in enumerate(nets, start=1)]
    assert rows(result, "ratings/train.parquet") == expected
    assert result.counts["ratings"] == 16
    csv = pacsv.read_csv(result.folder / "ratings/train.csv").to_pylist()
    assert [(r["path"], r["rating"], r["net_votes"]) for r in csv] == [
        (r["path"], r["rating"], r["net_votes"]) for r in expected]
    for row in expected:  # the copies are the candidates themselves
        assert (result.folder / row["path"]).read_bytes() == (data_dir / row["path"]).read_bytes()


def test_pairs_load_with_datasets_and_follow_the_votes(journal: Journal, data_dir: Path, tmp_path: Path,
                                                       log: Rounds) -> None:
    """Pick-a-Pic columns plus mode, round, voters, margin and share; label_0 names the winner's side; ties are
    dropped; the inpainted round is not a pair (its caption is the reply)."""
    import datasets

    result = export(journal, data_dir, tmp_path, formats=("pairs",))
    path = result.folder / "pairs/train-00000-of-00001.parquet"
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.column_names == ["caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid",
                               "model_0", "model_1", "user_id", "ranking_id", "created_at", "are_different",
                               "best_image_uid", "has_label", "mode", "round_id", "voters", "margin",
                               "winner_share"]
    lh, fox = log["lighthouse"], log["fox"]
    # lighthouse: ANN, BEN pick 1, CAT picks 2 -> 1 beats 2 (2:1), 1 beats 3 and 4, 2 beats 3 and 4; 3-4 unranked.
    # fox: ANN 3, CAT 4, BEN 3+4 -> 3 and 4 beat 1 and 2 (2:0 each); 3-4 is a 1:1 tie, 1-2 unranked.
    expected = {(f"{lh}-1", f"{lh}-2", 2 / 3), (f"{lh}-1", f"{lh}-3", 1.0), (f"{lh}-1", f"{lh}-4", 1.0),
                (f"{lh}-2", f"{lh}-3", 1.0), (f"{lh}-2", f"{lh}-4", 1.0),
                (f"{fox}-3", f"{fox}-1", 1.0), (f"{fox}-3", f"{fox}-2", 1.0),
                (f"{fox}-4", f"{fox}-1", 1.0), (f"{fox}-4", f"{fox}-2", 1.0)}
    # harbour (BEN picks 4) adds 3 pairs; the inpainted refinement "snowy" none (see edit_pairs).
    harbour = log["harbour"]
    expected |= {(f"{harbour}-4", f"{harbour}-{k}", 1.0) for k in (1, 2, 3)}

    def winner_loser_share(row: dict) -> tuple[str, str, float]:
        loser = row["image_1_uid"] if row["label_0"] == 1.0 else row["image_0_uid"]
        return row["best_image_uid"], loser, row["winner_share"]

    assert {winner_loser_share(r) for r in ds} == expected
    assert len(ds) == len(expected) == result.counts["pairs"]
    for row in ds:
        rid, k0 = row["image_0_uid"].rsplit("-", 1)
        k1 = int(row["image_1_uid"].rsplit("-", 1)[1])
        assert row["label_0"] in (0.0, 1.0) and row["label_0"] + row["label_1"] == 1
        assert row["best_image_uid"] == (row["image_0_uid"] if row["label_0"] == 1.0 else row["image_1_uid"])
        assert row["are_different"] and row["has_label"] and row["mode"] == "text2img" and row["round_id"] == rid
        assert row["margin"] == round(row["voters"] * (2 * row["winner_share"] - 1)) > 0
        assert row["user_id"] is None and row["model_0"] == row["model_1"] == "tiny-sd"
        assert row["ranking_id"] == int(rid, 16)
        for column, k in (("jpg_0", int(k0)), ("jpg_1", k1)):
            with Image.open(io.BytesIO(row[column])) as image:
                assert image.format == "JPEG"
                pixel = image.convert("RGB").getpixel((8, 8))
            assert all(abs(a - b) < 8 for a, b in zip(pixel, COLOURS[k], strict=True)), (column, pixel)
    fox_row = next(r for r in ds if r["round_id"] == fox)
    assert fox_row["caption"] == f"a red fox for @{P(ANN)}"
    assert fox_row["created_at"] == datetime.fromtimestamp(T0 + 10, UTC).replace(tzinfo=None)  # naive UTC


def test_rankings_rows(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """One row per voter of exactly one candidate; several picks or "none is good" give none."""
    result = export(journal, data_dir, tmp_path, formats=("rankings",))
    expected = []
    for key, prompt, picks in (("lighthouse", "a lighthouse at dusk", {ANN: 1, BEN: 1, CAT: 2}),
                               ("fox", f"a red fox for @{P(ANN)}", {ANN: 3, CAT: 4}),
                               ("snowy", "a lighthouse at dusk, snowy", {ANN: 2, BEN: 2}),
                               ("harbour", "a harbour", {BEN: 4})):
        rid = log[key]
        expected += sorted(({"prompt": prompt, **{f"image_{k}_uid": f"{rid}-{k}" for k in range(1, 5)},
                             "best_image_uid": f"{rid}-{best}", "user_id": P(user), "round_id": rid}
                            for user, best in picks.items()), key=lambda row: row["user_id"])
    assert rows(result, "rankings/train.parquet") == expected
    assert result.counts == {"rankings": 8}
    assert all((result.folder / f"images/{log['fox']}/{k}.png").is_file() for k in range(1, 5))


def test_export_pseudonyms_follow_the_key(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """Two exports under one key name users alike; under another key, differently."""
    users = []
    for folder, key in (("a", KEY), ("b", KEY), ("c", b"another-key")):
        (tmp_path / folder).mkdir()
        result = export(journal, data_dir, tmp_path / folder, formats=("rankings",), key=key)
        users.append([row["user_id"] for row in rows(result, "rankings/train.parquet")])
    assert users[0] == users[1] and set(users[0]) == {P(ANN), P(BEN), P(CAT)}
    assert not set(users[0]) & set(users[2]) and len(set(users[2])) == 3


def test_edits_rows(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """A refinement gives its parent image, instruction, mask and voted results; a removed parent's child none;
    edit_pairs carries the source image, the instruction, two results and the label."""
    result = export(journal, data_dir, tmp_path, formats=("edits", "edit_pairs"))
    lh, snowy = log["lighthouse"], log["snowy"]
    assert rows(result, "edits/train.parquet") == [{
        "round_id": snowy, "parent_round_id": lh, "parent_candidate": 1, "source_image": f"images/{lh}/1.png",
        "prompt": "a lighthouse at dusk, snowy", "instruction": f"make it snowy like @{P(BEN)} said",
        "mode": "inpaint", "mask": f"images/{snowy}/mask.png",
        "result_images": [f"images/{snowy}/{k}.png" for k in range(1, 5)], "result_votes": [0, 2, 0, 0],
        "plan": '{"mode": "inpaint"}'}]
    for relative in (f"images/{lh}/1.png", f"images/{snowy}/mask.png", f"images/{snowy}/4.png"):
        assert (result.folder / relative).read_bytes() == (data_dir / relative).read_bytes()
    pairs = rows(result, "edit_pairs/train-00000-of-00001.parquet")
    assert sorted((r["best_image_uid"], r["voters"], r["margin"]) for r in pairs) == [
        (f"{snowy}-2", 2, 2)] * 3  # ANN and BEN picked 2 over 1, 3 and 4
    for row in pairs:
        assert row["instruction"] == f"make it snowy like @{P(BEN)} said" and row["mode"] == "inpaint"
        assert row["source_image_uid"] == f"{lh}-1"
        assert row["mask_png"] == (data_dir / f"images/{snowy}/mask.png").read_bytes()
        winner = row["jpg_0"] if row["label_0"] == 1.0 else row["jpg_1"]
        with Image.open(io.BytesIO(winner)) as image:
            assert all(abs(a - b) < 8 for a, b in zip(image.convert("RGB").getpixel((8, 8)), COLOURS[2], strict=True))


def test_flagged_only_on_request_and_removed_never(journal: Journal, data_dir: Path, tmp_path: Path,
                                                  log: Rounds) -> None:
    """include_flagged brings back the flagged round, never the removed one or its refinement."""
    plain = export(journal, data_dir, tmp_path)
    assert exported_rounds(plain) == {log[k] for k in ("lighthouse", "fox", "snowy", "harbour")}
    (tmp_path / "flagged").mkdir()
    flagged = export(journal, data_dir, tmp_path / "flagged", filters=ExportFilters(include_flagged=True))
    assert exported_rounds(flagged) == exported_rounds(plain) | {log["storm"]}
    assert not any(mentions(plain.folder, log[k]) for k in ("storm", "gore", "gore2", "dan", "quiet"))
    assert not any(mentions(flagged.folder, log[k]) for k in ("gore", "gore2", "dan", "quiet"))


def test_opted_out_users_leave_no_trace(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """forget_me and excluded_users both remove the user's rounds, votes and refinements."""
    result = export(journal, data_dir, tmp_path, filters=ExportFilters(excluded_users=frozenset({CAT})))
    # DAN (forget_me): his round and his vote on lighthouse 3 are gone. CAT (excluded): her pick of
    # lighthouse 2 and fox 4 are gone, and so is her refinement "snowy".
    assert exported_rounds(result) == {log[k] for k in ("lighthouse", "fox", "harbour")}
    everything = [row for f in ("ratings/train.parquet", "rankings/train.parquet") for row in rows(result, f)]
    assert not {P(DAN), P(CAT)} & {row.get("user_id") for row in everything}
    nets = {(r["round_id"], r["candidate"]): r["net_votes"] for r in rows(result, "ratings/train.parquet")}
    assert nets[(log["lighthouse"], 2)] == -1 and nets[(log["lighthouse"], 3)] == -1
    assert nets[(log["fox"], 4)] == 1
    assert json.loads((result.folder / "export.json").read_text())["filters"]["excluded_users"] == 1


def test_no_raw_user_id_in_any_file(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """Neither the decimal text nor the int64 bytes of any user id appear in any exported file."""
    result = export(journal, data_dir, tmp_path, filters=ExportFilters(excluded_users=frozenset({EVA})))
    files = [p for p in result.folder.rglob("*") if p.is_file()]
    # 16 images, a mask, 9 tables (ratings twice; kto's images are in its table), 2 cards
    assert sorted(files) == result.files and len(files) == 28
    for path in files:
        data = path.read_bytes()
        for user in USERS:
            assert str(user).encode() not in data, (path, user)
            assert user.to_bytes(8, "little") not in data and user.to_bytes(8, "big") not in data, (path, user)


def test_filters_time_channel_and_min_votes(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """since is inclusive, until exclusive; channel must match; min_votes counts distinct voters."""
    cases = {
        "time": (ExportFilters(since=T0 + 10, until=T0 + 30), {"fox", "snowy"}),
        "channel": (ExportFilters(channel_id=8), {"harbour"}),
        "min_votes": (ExportFilters(min_votes=3), {"lighthouse", "fox"}),  # 4 and 3 voters; DAN not counted
        "min_votes_4": (ExportFilters(min_votes=4), {"lighthouse"}),
    }
    for label, (filters, keys) in cases.items():
        (tmp_path / label).mkdir()
        result = export(journal, data_dir, tmp_path / label, filters=filters, formats=("ratings", "edits"))
        assert {r["round_id"] for r in rows(result, "ratings/train.parquet")} == {log[k] for k in keys}, label
        # The refinement's row needs only its parent in the log, not inside the filters.
        assert [r["round_id"] for r in rows(result, "edits/train.parquet")] == [log["snowy"]] * ("snowy" in keys)


def test_a_round_with_a_missing_image_is_skipped_whole(journal: Journal, data_dir: Path, tmp_path: Path,
                                                        log: Rounds) -> None:
    """A candidate file gone from disk drops its round from every format, and nothing else."""
    (data_dir / f"images/{log['fox']}/2.png").unlink()
    result = export(journal, data_dir, tmp_path)
    assert exported_rounds(result) == {log[k] for k in ("lighthouse", "snowy", "harbour")}
    assert not mentions(result.folder, log["fox"])


def test_card_export_json_and_progress(journal: Journal, data_dir: Path, tmp_path: Path, log: Rounds) -> None:
    """The card names the export, its filters, counts and columns; progress runs once per round."""
    calls: list[tuple[int, int]] = []
    result = build_dataset(journal, data_dir, tmp_path / "export", FORMATS, ExportFilters(min_votes=1),
                           Pseudonymiser(KEY), name="refinery-test", progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 9) for i in range(1, 10)]  # every round in the log, exported or not
    meta = json.loads((result.folder / "export.json").read_text())
    assert meta["name"] == "refinery-test" and meta["formats"] == list(FORMATS)
    assert meta["counts"] == result.counts == {"ratings": 16, "pairs": 12, "voter_pairs": 22, "rankings": 8,
                                               "kto": 12, "edits": 1, "edit_pairs": 3, "arena": 0}
    assert meta["filters"]["min_votes"] == 1 and meta["users_opted_out"] == 1
    assert meta["rounds"] == 4  # the rounds that gave rows, not every round looked at
    card = (result.folder / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n") and "\n# refinery-test\n" in card and "pseudonym" in card
    assert "4 rounds gave rows" in card and "1 user who ran /forget-me" in card and "1 users" not in card
    for fmt, count in result.counts.items():
        assert f"| {fmt} |" in card and f"| {count} |" in card
    for column in ("best_image_uid", "label_0", "net_votes", "result_votes", "source_image"):
        assert f"`{column}`" in card
    assert not list(tmp_path.glob(".export.partial-*"))


def test_bad_requests_are_refused(journal: Journal, data_dir: Path, tmp_path: Path) -> None:
    """Unknown formats, a non-empty target and inconsistent filters raise with the bad value."""
    with pytest.raises(ValueError, match="'votes'"):
        export(journal, data_dir, tmp_path, formats=("votes",))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export(journal, data_dir, tmp_path)
    with pytest.raises(ValueError, match="min_votes"):
        ExportFilters(min_votes=-1)
    with pytest.raises(ValueError, match="before until"):
        ExportFilters(since=2.0, until=1.0)


def test_every_config_the_card_names_loads_as_the_card_says(journal: Journal, data_dir: Path, tmp_path: Path,
                                                            log: Rounds) -> None:
    """Each `config_name` of the card's `configs:` header loads with `datasets.load_dataset(<folder>, <name>)`,
    the call the card's Loading paragraph shows, with the rows export.json counts; kto's images decode."""
    import datasets
    import yaml

    result = export(journal, data_dir, tmp_path)
    card = (result.folder / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    names = [config["config_name"] for config in header["configs"]]
    assert names == [fmt for fmt, n in result.counts.items() if n]  # every format with rows; arena has none
    for name in names:
        loaded = datasets.load_dataset(str(result.folder), name, cache_dir=str(tmp_path / "hf-cache"))
        assert list(loaded) == ["train"] and len(loaded["train"]) == result.counts[name], name
    assert '`datasets.load_dataset("<this folder>", "pairs")`' in card and "imagefolder" not in card
    kto = datasets.load_dataset(str(result.folder), "kto", cache_dir=str(tmp_path / "hf-cache"))["train"]
    first = next(r for r in kto if r["round_id"] == log["fox"] and r["candidate"] == 3)
    assert first["image"].size == (16, 16) and first["image"].convert("RGB").getpixel((8, 8)) == COLOURS[3]
    assert (first["caption"], first["label"], first["reason"]) == (f"a red fox for @{P(ANN)}", 1, "picked")


@pytest.mark.parametrize("secret", ["k", "x" * 15, "é" * 7, "  fifteen-bytes! "])
def test_a_short_export_key_is_refused_by_name_not_value(secret: str) -> None:
    """A key under 16 bytes (UTF-8, blanks stripped) is refused as the dashboard's is: one line that names
    REFINERY_EXPORT_KEY and never the value; 16 bytes are enough."""
    with pytest.raises(ExportKeyMissingError) as refused:
        from_secret(secret)
    message = str(refused.value)
    assert message.startswith("REFINERY_EXPORT_KEY is shorter than 16 bytes") and "\n" not in message
    assert secret.strip() not in message
    assert from_secret("x" * 16).user(ANN) and from_secret("é" * 8).user(ANN)


def test_an_export_that_matches_nothing_writes_nothing(journal: Journal, data_dir: Path, tmp_path: Path,
                                                        log: Rounds) -> None:
    """Filters no round passes raise EmptyExportError saying why the rounds were not used; no folder (not even
    a partial one) is left to commit."""
    with pytest.raises(EmptyExportError) as empty:
        export(journal, data_dir, tmp_path, filters=ExportFilters(channel_id=99))
    assert str(empty.value) == ("no round gave a row for ratings, pairs, voter_pairs, rankings, kto, edits, "
                                "edit_pairs, arena (9 rounds in the log; outside the date range or channel: 5; "
                                "flagged, opted out, or refines such a round: 3; removed by a moderator: 1)")
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export.partial-*"))
