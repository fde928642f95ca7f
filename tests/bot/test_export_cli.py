"""`refinery export`: the dataset export from the command line, for moderators working outside Discord."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from bot.__main__ import main
from storage.images import ImageStore
from storage.journal import Journal
from storage.records import ModerationAction, Round, VoteEvent, new_id
from tests.oxen_reader import committed_tree

ANN, BEN = 311111111111111111, 322222222222222222
JAN_2 = 1_767_312_000.0  # 2026-01-02 00:00 UTC


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def add_round(journal: Journal, data_dir: Path, requester: int, at: float) -> str:
    rid = new_id()
    paths = ImageStore(data_dir).save_round(rid, tuple(png((60 * k, 0, 0)) for k in range(1, 5)))
    journal.append(Round(
        round_id=rid, prompt="a lighthouse", negative_prompt="", mode="text2img", steps=4, guidance=7.5, width=16,
        height=16, seeds=(1, 2, 3, 4), model_id="tiny", model_revision="r1", scheduler="ddim", image_paths=paths,
        requester_id=requester, guild_id=None, channel_id=7, source="slash", queued_s=0.0, generate_s=0.1,
        created_at=at))
    return rid


@pytest.fixture
def config_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config whose journal holds rounds on Jan 2 and Jan 5 (each voted on) and one by an opted-out user."""
    path = tmp_path / "refinery.toml"
    path.write_text('[storage]\ndata_dir = "data"\n')
    data_dir = tmp_path / "data"
    journal = Journal(data_dir / "journal.sqlite3")
    rounds = {"jan2": add_round(journal, data_dir, ANN, JAN_2 + 3600),
              "jan5": add_round(journal, data_dir, ANN, JAN_2 + 3 * 86400),
              "ben": add_round(journal, data_dir, BEN, JAN_2 + 7200)}
    for rid in rounds.values():
        journal.append(VoteEvent(new_id(), rid, 2, ANN, "2️⃣", "add", None, 7, 1))
    journal.append(ModerationAction(new_id(), "forget_me", BEN, None, BEN, "/forget-me"))
    journal.close()
    return path, rounds


def test_export_writes_the_folder(config_file: tuple[Path, dict[str, str]], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With the key set, the chosen formats and days are written, with a progress bar on stderr, and the folder
    is committed as its own Oxen repository."""
    path, rounds = config_file
    monkeypatch.setenv("REFINERY_EXPORT_KEY", "cli-test-key-0123456789")
    out = tmp_path / "out" / "first-days"
    code = main(["export", "--config", str(path), "--format", "ratings,pairs", "--since", "2026-01-01",
                 "--until", "2026-01-03", "--min-votes", "1", "--name", "first-days", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "export first-days: 4 ratings, 3 pairs" in captured.out
    assert f"folder: {out}" in captured.out
    assert "exporting: 100%" in captured.err and "3/3" in captured.err
    ratings = pq.read_table(out / "ratings" / "train.parquet").to_pylist()
    assert {r["round_id"] for r in ratings} == {rounds["jan2"]}  # Jan 5 is after --until, Ben opted out
    assert sorted(p.name for p in out.iterdir()) == [".oxen", "README.md", "export.json", "images", "pairs", "ratings"]
    assert "oxen: the folder is its own repository, commit " in captured.out
    committed = committed_tree(out)
    assert sorted({f.split("/")[0] for f in committed["files"]}) == ["README.md", "export.json", "images", "pairs",
                                                                      "ratings"]
    plain = tmp_path / "x"
    assert main(["export", "--config", str(path), "--format", "ratings", "--no-oxen", "--out", str(plain)]) == 0
    assert not (tmp_path / "x" / ".oxen").exists()


def test_export_without_the_key_fails_clearly(config_file: tuple[Path, dict[str, str]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """No REFINERY_EXPORT_KEY: a non-zero exit, one line naming it, and nothing written."""
    path, _ = config_file
    monkeypatch.delenv("REFINERY_EXPORT_KEY", raising=False)
    out = tmp_path / "out"
    code = main(["export", "--config", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert "refinery export: set REFINERY_EXPORT_KEY in the environment" in err
    assert not out.exists()


def test_export_bad_option_names_it(config_file: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A bad format or date is refused with the bad value in the message."""
    path, _ = config_file
    monkeypatch.setenv("REFINERY_EXPORT_KEY", "cli-test-key-0123456789")
    assert main(["export", "--config", str(path), "--format", "ratings,votes"]) == 2
    assert "Unknown export format `votes`" in capsys.readouterr().err
    assert main(["export", "--config", str(path), "--since", "01/02/2026"]) == 2
    assert "since='01/02/2026' is not a date" in capsys.readouterr().err
    assert main(["export", "--config", str(path), "--until", "9999-12-31"]) == 2  # no OverflowError traceback
    assert "until=9999-12-31 is out of range" in capsys.readouterr().err


def test_a_short_key_or_an_empty_match_is_one_line_and_writes_nothing(
        config_file: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A one-character REFINERY_EXPORT_KEY is refused in one line naming the variable, never its value; filters
    that match no round are refused in one line saying so, with no folder and no Oxen repository."""
    path, _ = config_file
    out = tmp_path / "out"
    monkeypatch.setenv("REFINERY_EXPORT_KEY", "Ж")
    assert main(["export", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "REFINERY_EXPORT_KEY is shorter than 16 bytes" in err[0], err
    assert "Ж" not in err[0]
    assert not out.exists()
    monkeypatch.setenv("REFINERY_EXPORT_KEY", "cli-test-key-0123456789")
    assert main(["export", "--config", str(path), "--out", str(out), "--channel", "99"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("refinery")]
    assert len(err) == 1 and err[0].startswith("refinery export: Nothing to export: no round gave a row"), err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
