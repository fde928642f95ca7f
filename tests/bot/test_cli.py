"""The `refinery` command: run without a token, a bad config, and the offline demo."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def refinery(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True,
                          env=base | (env or {}), cwd=cwd, timeout=timeout)


def test_run_without_token_says_what_to_set() -> None:
    """`refinery run` with no DISCORD_TOKEN exits 2 with one clear line."""
    done = refinery("run")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "set DISCORD_TOKEN" in lines[0]


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    """A config with an unknown key stops `refinery run` before anything starts, naming the key."""
    config = tmp_path / "c.toml"
    config.write_text("[generation]\nmax_stepz = 3\n")
    done = refinery("run", "--config", str(config), env={"DISCORD_TOKEN": "secret-token-123"})
    assert done.returncode == 2
    assert "generation.max_stepz" in done.stderr
    assert "secret-token-123" not in done.stderr + done.stdout


def test_demo_runs_the_whole_loop_offline(tmp_path: Path) -> None:
    """`refinery demo` copies the toy model, plays a session — prompt, votes (one in the bare keycap
    spelling), a reply that refines, a 🔁 button — then closes the loop (a simulated community votes, a
    moderator trains on the votes, /model use, the shapes measured before and after on the same seeds, an
    arena round and its results), prints each result, commits it to Oxen, and ends with commands that
    inspect what it wrote; those commands work as printed."""
    done = refinery("demo", "--out", str(tmp_path / "demo"), env={"HF_HUB_OFFLINE": "1"}, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.count("attachments: ") == 5 and "64×64" in out
    assert out.count("reactions added by the bot: 1️⃣ 2️⃣ 3️⃣ 4️⃣") == 5
    assert out.count("buttons: 🔁 V1 V2 V3 V4 U1 U2 U3 U4") == 5
    assert "48 rounds, 144 votes journaled" in out
    assert "training dpo on " in out and "oxen: branch models/demo-taste, commit " in out
    assert "records adapter demo-taste@sha256:" in out
    # The shapes measured before and after on the same seeds (the proof that they move is test_toy_loop's).
    assert re.search(r"large: the adapter's image scored higher in \d+ of 32 same-seed pairs", out), out[-3000:]
    assert "the shape covers " in out and "with the adapter" in out
    assert "4 decisive comparisons (4 won by the adapter)" in out
    assert "#2: 3 vote(s)" in out
    assert "refining #2 (your vote) by conditioning" in out and ": img2img from #2 of " in out
    assert "rerolling with new seeds" in out
    assert "Oxen: committed" in out and "0 not yet in Oxen" in out
    rounds = len(list((tmp_path / "demo" / "data" / "images").rglob("*.png"))) // 4
    assert rounds == 4 + 48 + 2 * 8 + 1  # the session, the community's, before and after, the arena round
    config = tmp_path / "demo" / "config.toml"
    lines = out.splitlines()
    assert f"The demo wrote its data to {tmp_path / 'demo' / 'data'}" in out
    assert f"  refinery log status --config {config}" in lines
    assert f"  REFINERY_EXPORT_KEY=any-long-random-secret refinery export --config {config}" in lines
    status = refinery("log", "status", "--config", str(config))
    assert status.returncode == 0 and " total, 0 not yet in Oxen" in status.stdout, status.stderr
    export = refinery("export", "--config", str(config), "--no-oxen",
                      env={"REFINERY_EXPORT_KEY": "any-long-random-secret"})
    assert export.returncode == 0 and "2 edits" in export.stdout, export.stderr[-2000:]


def test_demo_again_in_the_same_folder_is_one_line(tmp_path: Path) -> None:
    """A second `refinery demo --out` into a folder that holds a demo's data refuses at once, in one line,
    before it writes anything (it never appends a half session to the old log)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "journal.sqlite3").write_bytes(b"the first demo's log")
    done = refinery("demo", "--out", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"refinery demo: {tmp_path / 'data'} exists: a demo writes a fresh log; choose another --out or remove it"]
    assert (tmp_path / "data" / "journal.sqlite3").read_bytes() == b"the first demo's log"
    assert not (tmp_path / "toy-model").exists()


def test_log_level_in_any_case_before_or_after_the_sub_command(tmp_path: Path) -> None:
    """`--log-level debug` (lowercase) works before and after the sub-command; a bad level is one
    usage line naming the value."""
    config = tmp_path / "c.toml"
    config.write_text('[storage]\ndata_dir = "data"\n')
    for args in (("--log-level", "debug", "log", "status"), ("log", "status", "--log-level", "Debug")):
        done = refinery(*args, "--config", str(config))
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "Journal:" in done.stdout
    done = refinery("--log-level", "loud", "log", "status")
    assert done.returncode == 2 and "'loud' is not a log level" in done.stderr and "Traceback" not in done.stderr


def test_a_wrong_flag_shows_the_sub_commands_usage() -> None:
    """`refinery run --bogus` prints `refinery run`'s usage (and `log status`'s for it), not the top level's."""
    done = refinery("run", "--bogus")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: refinery run ") and "unrecognized arguments: --bogus" in done.stderr
    done = refinery("log", "status", "--nope")
    assert done.returncode == 2 and done.stderr.startswith("usage: refinery log status ")


def test_demo_with_an_unwritable_out_is_one_line(tmp_path: Path) -> None:
    """`demo --out` where no folder can be made is one line naming the path, no traceback."""
    (tmp_path / "a-file").write_text("")
    done = refinery("demo", "--out", str(tmp_path / "a-file" / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("refinery")]
    assert lines == [f"refinery demo: Not a directory: {tmp_path / 'a-file' / 'out'} (--log-level debug shows where)"]


def test_toy_model_copies_the_shipped_checkpoint_and_says_how_to_use_it(tmp_path: Path) -> None:
    """`refinery toy-model --out DIR` writes the checked toy model there at once and prints the settings that
    run the bot on it; an occupied DIR is one line."""
    done = refinery("toy-model", "--out", str(tmp_path / "toy"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"toy model: {tmp_path / 'toy'}"
    assert 'default_width = default_height = 64' in done.stdout and "lr" in done.stdout
    assert (tmp_path / "toy" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    busy = refinery("toy-model", "--out", str(tmp_path / "busy"))
    assert busy.returncode == 2 and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    assert "not empty" in busy.stderr and (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def _command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every sub-command under `parser`, as the words that name it (`("arena", "report")`)."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _command_paths(sub, (*path, name))
    return found


def test_every_sub_command_has_a_help_page(capsys: pytest.CaptureFixture[str]) -> None:
    """`refinery --help` and `--help` of every sub-command, found by walking the parser (so a new one is
    checked too), print their usage and exit 0 (a literal % in a help text once crashed `arena --help`)."""
    from bot.__main__ import build_parser, main

    paths = _command_paths(build_parser())
    assert ("arena",) in paths and ("arena", "report") in paths and ("log", "status") in paths
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0, path
        assert out.startswith(f"usage: {' '.join(('refinery', *path))} "), (path, out[:200])
