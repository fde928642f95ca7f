"""`refinery train`: from a community's votes to a trained adapter on the Oxen branch models/<name>."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.__main__ import main
from storage.journal import Journal
from tests.community import build_community
from tests.oxen_reader import committed_rows

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--resolution", "64", "--batch", "4", "--rank", "4", "--lr", "3e-3", "--threads", "1",
        "--min-examples", "8", "--held-out", "0.25"]


class TrainProcess:
    """A real `python -m bot train` in its own process, its output read as it is written (the progress bar
    draws on stderr)."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.argv = [sys.executable, "-m", "bot", "train", *args]
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        while chunk := stream.read(64):  # type: ignore[attr-defined]
            into.append(chunk)

    @property
    def out(self) -> str:
        return "".join(self._out)

    @property
    def err(self) -> str:
        return "".join(self._err)

    def wait_for_step(self, step: int, timeout: float = 180.0) -> int:
        """Block until the bar shows at least `step` steps done; the step it shows."""
        deadline = time.monotonic() + timeout
        while True:
            drawn = [int(n) for n in re.findall(r"(\d+)/\d+ \[[^]]*step", self.err)]  # not "Loading weights"
            if drawn and max(drawn) >= step:
                return max(drawn)
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.proc.poll(), self.err[-2000:])
            time.sleep(0.02)

    def finish(self, timeout: float = 300.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code


@pytest.fixture
def community_config(tmp_path: Path, colour_model: Path) -> Path:
    """A config on the colour-seeing tiny checkpoint whose journal holds the reddish-beats-bluish community."""
    path = tmp_path / "refinery.toml"
    path.write_text(f'[model]\nid = "{colour_model}"\nlocal_files_only = true\ndevice = "cpu"\n'
                    '[storage]\ndata_dir = "data"\n')
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    build_community(journal, tmp_path / "data")
    journal.close()
    return path


@pytest.mark.slow
def test_train_makes_a_versioned_adapter_that_learned(community_config: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """One command: examples from the votes, a LoRA whose held-out accuracy rose, training.json and a card,
    all committed on models/<name> (read back with the oxen package) on top of the data's own commit."""
    code = main(["train", "--config", str(community_config), "--name", "redder", "--steps", "24",
                 "--eval-every", "8", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    folder = tmp_path / "data" / "models" / "redder"
    meta = json.loads((folder / "training.json").read_text())
    assert meta["method"] == "dpo" and meta["steps_done"] == 24 and meta["base_model"] == "sd"
    assert meta["held_out_accuracy"] > meta["held_out_accuracy_start"], meta["curves"]["held_out"]
    assert "inpaint round: its prompt is the reply, not a caption" in meta["data"]["left_out"]
    assert meta["data"]["oxen_commit"] and meta["data"]["train_examples"] >= 8
    assert str(tmp_path) not in (folder / "training.json").read_text()  # no absolute path
    assert "adapter: " in captured.out and "oxen: branch models/redder, commit " in captured.out
    assert not (folder / "checkpoint").exists()

    branch = committed_rows(tmp_path / "data" / "oxen", "models/redder")
    assert sorted(branch["models"]) == ["models/README.md", "models/redder/README.md",
                                        "models/redder/pytorch_lora_weights.safetensors",
                                        "models/redder/training.json"]
    assert branch["log"][0].startswith("refinery model redder: dpo, 24 steps")
    assert len(branch["tables"]["votes"]) > 0, "the branch starts from the log's commit holding the data"
    main_branch = committed_rows(tmp_path / "data" / "oxen")
    assert main_branch["branch"] == "main" and list(main_branch["models"]) == ["models/README.md"]


def test_too_little_data_is_one_line_and_exit_2(community_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fewer usable examples than --min-examples: exit 2 and one line naming the counts; nothing written."""
    code = main(["train", "--config", str(community_config), "--name", "tiny", "--min-examples", "1000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("refinery train: only ") and "preference pairs" in err and "--min-examples 1000" in err
    assert not (community_config.parent / "data" / "models" / "tiny").exists()


def test_bad_options_are_named(community_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad name, a bad day, bad settings and a resume of nothing are refused with the value named."""
    cases = ((["--name", "../up"], "--name '../up'"), (["--name", "a", "--since", "yesterday"], "since='yesterday'"),
             (["--name", "a", "--rank", "0"], "rank must be a positive integer"),
             (["--name", "a", "--resume"], "nothing to resume"))
    for extra, expected in cases:
        assert main(["train", "--config", str(community_config), *extra]) == 2
        assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_resume_finishes(community_config: Path, tmp_path: Path) -> None:
    """Ctrl-C mid-run: exit 130, a checkpoint and a --resume hint; --resume then finishes the same run, on the
    data it started with even though the community voted on more rounds in between."""
    run = TrainProcess(tmp_path, "--config", str(community_config), "--name", "paused", "--steps", "60",
                       "--eval-every", "60", *FAST)
    run.wait_for_step(1)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.err
    out = run.out
    assert "checkpoint saved in" in out and "--resume" in out
    folder = tmp_path / "data" / "models" / "paused"
    assert (folder / "checkpoint").is_dir() and not (folder / "pytorch_lora_weights.safetensors").exists()
    stopped_at = int(out.split("stopped at step ")[1].split()[0])
    assert 0 < stopped_at < 60
    seq = int(out.split("the log through event ")[1].split(";")[0])
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    build_community(journal, tmp_path / "data", rounds_per_prompt=1, seed=5)  # more votes meanwhile
    assert journal.last_seq() > seq
    journal.close()

    started = time.monotonic()
    resumed = TrainProcess(tmp_path, *run.argv[4:], "--resume")
    assert resumed.finish(900) == 0, resumed.err[-2000:]
    meta = json.loads((folder / "training.json").read_text())
    assert meta["steps_done"] == 60 and not (folder / "checkpoint").exists()
    assert meta["data"]["journal_seq"] == seq and not (folder / "selection.json").exists()
    print(f"\nresumed from step {stopped_at} and finished in {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_kto_trains_on_rated_images(community_config: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--method kto: every image of a usable round, liked (the voted reddish ones) or not, half each; the
    loss at step 0 is KTO's reference value (0.5 per example at weight 1)."""
    code = main(["train", "--config", str(community_config), "--name", "liked", "--method", "kto", "--steps", "4",
                 "--eval-every", "4", *FAST])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "data" / "models" / "liked" / "training.json").read_text())
    assert meta["method"] == "kto" and meta["beta"] == 1000
    assert meta["data"]["desirable"] == meta["data"]["undesirable"] > 0
    assert meta["curves"]["loss"][0] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.slow
def test_two_runs_of_one_name_at_once_one_is_refused(community_config: Path, tmp_path: Path) -> None:
    """`refinery train --name same` twice at once (seeds 1 and 2): one trains and commits, the other is refused
    with one line at once, so the folder and the branch hold the adapter of the run that said so (#23.2)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-m", "bot", "train", "--config", str(community_config), "--name",
                              "same", "--steps", "8", "--eval-every", "8", *FAST, "--seed", str(seed)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (1, 2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    done = [(run.returncode, out, err) for run, (out, err) in zip(runs, outputs, strict=True)]
    assert sorted(code for code, _, _ in done) == [0, 2], [(code, err[-1500:]) for code, _, err in done]
    winner = next(seed for seed, (code, _, _) in zip((1, 2), done, strict=True) if code == 0)
    refused = next(err for code, _, err in done if code == 2).strip()
    assert refused.startswith("refinery train: another `refinery train --name same` is running"), refused
    assert len(refused.splitlines()) == 1, refused
    meta = json.loads((tmp_path / "data" / "models" / "same" / "training.json").read_text())
    assert meta["settings"]["seed"] == winner
    branch = committed_rows(tmp_path / "data" / "oxen", "models/same")
    assert branch["models"]["models/same/pytorch_lora_weights.safetensors"] == meta["adapter_sha256"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_like_ctrl_c(community_config: Path, tmp_path: Path) -> None:
    """SIGTERM mid-run (a service manager, `kill`): the step in hand finishes, a checkpoint is saved, exit 143 with
    the --resume hint; the run announced its periodic checkpoints, every 25 steps by default (#23.3)."""
    run = TrainProcess(tmp_path, "--config", str(community_config), "--name", "termed", "--steps", "400",
                       "--eval-every", "400", *FAST)
    run.wait_for_step(1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 128 + signal.SIGTERM, run.err[-2000:]
    assert "a checkpoint every 25 steps in " in run.out
    assert "checkpoint saved in" in run.out and "--resume" in run.out, run.out
    stopped_at = int(run.out.split("stopped at step ")[1].split()[0])
    state = json.loads((tmp_path / "data" / "models" / "termed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == stopped_at > 0


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(community_config: Path, tmp_path: Path) -> None:
    """SIGKILL (nothing can be saved then) after a few checkpoints: the last one is there, a plain rerun is sent
    to --resume, and --resume finishes the run (#23.3)."""
    args = ["--config", str(community_config), "--name", "killed", "--steps", "30", "--eval-every", "30",
            "--checkpoint-every", "4", *FAST]
    run = TrainProcess(tmp_path, *args)
    run.wait_for_step(9)
    run.proc.kill()
    run.finish()
    assert "a checkpoint every 4 steps in " in run.out
    folder = tmp_path / "data" / "models" / "killed"
    step = json.loads((folder / "checkpoint" / "state.json").read_text())["step"]
    assert step >= 8 and step % 4 == 0, step

    again = TrainProcess(tmp_path, *args)
    assert again.finish() == 2 and "add --resume to continue it" in again.err, again.err
    resumed = TrainProcess(tmp_path, *args, "--resume")
    assert resumed.finish() == 0, resumed.err[-2000:]
    meta = json.loads((folder / "training.json").read_text())
    assert meta["steps_done"] == 30 and not (folder / "checkpoint").exists()


def test_a_folder_without_adapter_or_checkpoint_does_not_hold_its_name(community_config: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """What a run killed before its first checkpoint leaves (selection.json, a half-written checkpoint) is started
    over; a finished adapter or a checkpoint does hold the name; the help says how often checkpoints are saved
    (#23.3)."""
    models = community_config.parent / "data" / "models"
    (models / "early" / ".checkpoint.partial").mkdir(parents=True)
    (models / "early" / "selection.json").write_text('{"journal_seq": 3}\n')
    assert main(["train", "--config", str(community_config), "--name", "early", "--min-examples", "1000"]) == 2
    assert "usable preference pairs" in capsys.readouterr().err  # past the name: it went on to read the votes

    (models / "done").mkdir()
    (models / "done" / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    (models / "stopped" / "checkpoint").mkdir(parents=True)
    for name, expected in (("done", "exists already"), ("stopped", "add --resume to continue it")):
        assert main(["train", "--config", str(community_config), "--name", name]) == 2
        assert expected in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "save a checkpoint every N steps" in " ".join(capsys.readouterr().out.split())


def test_a_damaged_checkpoint_is_one_line_naming_the_file(community_config: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--resume on a truncated, random or empty trainer.pt, a state.json without settings or with a step no run of
    its length stops at, or a damaged selection.json: exit 2, one line naming the file and what to do, no
    traceback (#23.4)."""
    from pipeline.training import TrainSettings

    state = {"format": 1, "step": 3, "settings": TrainSettings(method="dpo", steps=400).to_dict(), "model": "m",
             "examples": "e", "curves": {"loss": [0.7] * 3, "train_accuracy": [0.5] * 3, "held_out": []},
             "seconds": 1.0}
    valid = json.dumps(state)
    cases = {
        "truncated": (valid, b"PK\x03\x04" + bytes(100), "trainer.pt"),
        "random": (valid, os.urandom(4096), "trainer.pt"),
        "empty": (valid, b"", "trainer.pt"),
        "nosettings": (json.dumps({k: v for k, v in state.items() if k != "settings"}), b"", "state.json"),
        "huge": (json.dumps({**state, "step": 10**9}), b"", "state.json"),
        "negative": (json.dumps({**state, "step": -5}), b"", "state.json"),
    }
    models = community_config.parent / "data" / "models"
    for name, (state_json, tensors, damaged) in cases.items():
        checkpoint = models / name / "checkpoint"
        checkpoint.mkdir(parents=True)
        (checkpoint / "state.json").write_text(state_json)
        (checkpoint / "trainer.pt").write_bytes(tensors)
        code = main(["train", "--config", str(community_config), "--name", name, "--resume", *FAST])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, (name, err)
        assert f"checkpoint file {checkpoint / damaged} is damaged: " in err, (name, err)
        assert f"delete {checkpoint} and run the same command without --resume" in err, (name, err)

    (models / "random" / "selection.json").write_text("{\"journal_seq\": ")
    assert main(["train", "--config", str(community_config), "--name", "random", "--resume", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{models / 'random' / 'selection.json'} is damaged" in err, err
