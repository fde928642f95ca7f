"""Model branches: the Oxen writer commits a requested adapter on `models/<name>` and keeps main intact."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from storage.journal import Journal
from storage.model_branches import commit_outcome, request_commit, requests_dir
from storage.writer_settings import EXIT_OK, WriterSettings
from tests.oxen_reader import committed_rows
from tests.storage.conftest import ROOT, writer_env


def fake_model(data_dir: Path, name: str) -> Path:
    """A finished adapter folder as `refinery train` leaves it (training.json marks it finished)."""
    folder = data_dir / "models" / name
    folder.mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text(f"# {name}\n")
    (folder / "training.json").write_text(json.dumps({"name": name, "method": "dpo", "steps_done": 4,
                                                      "data": {"train_examples": 9, "journal_seq": 3}}))
    return folder


def test_model_is_committed_on_its_branch_and_main_keeps_going(journal: Journal, settings: WriterSettings,
                                                                 data_dir: Path, make_round, make_vote,
                                                                 run_once) -> None:
    """Branch from main's head with exactly the model; main's next group commit lands on main; a
    repeated request is answered with the same commit, not a second one."""
    first = make_round()
    journal.append(first, make_vote(first.round_id, 1, 10))
    assert run_once().returncode == EXIT_OK
    request_commit(data_dir, "weekly", fake_model(data_dir, "weekly"))
    journal.append(make_vote(first.round_id, 2, 11))  # pending when the request arrives: committed first
    result = run_once()
    assert result.returncode == EXIT_OK, result.stderr
    outcome = commit_outcome(data_dir, "weekly")
    assert outcome is not None and outcome["branch"] == "models/weekly", outcome
    assert not (requests_dir(data_dir) / "weekly.json").exists()
    assert [p.name for p in (settings.repo / "models").iterdir()] == ["README.md"], "main holds no model"

    journal.append(make_vote(first.round_id, 3, 12))
    request_commit(data_dir, "weekly", data_dir / "models" / "weekly")  # asked again (a retry)
    assert run_once().returncode == EXIT_OK
    assert commit_outcome(data_dir, "weekly") == outcome

    main = committed_rows(settings.repo)
    assert main["branch"] == "main" and list(main["models"]) == ["models/README.md"]
    assert [v["user_id"] for v in main["tables"]["votes"]] == [10, 11, 12]
    assert all(m.startswith("refinery: ") for m in main["log"])
    branch = committed_rows(settings.repo, "models/weekly")
    assert branch["log"][0].startswith("refinery model weekly: dpo, 4 steps")
    assert branch["log"][1:] == main["log"][1:], "branched from main's head of the time, committed once"
    assert sorted(branch["models"]) == ["models/README.md", "models/weekly/README.md",
                                        "models/weekly/pytorch_lora_weights.safetensors",
                                        "models/weekly/training.json"]
    assert [v["user_id"] for v in branch["tables"]["votes"]] == [10, 11]


def test_a_request_without_a_finished_folder_is_answered_with_an_error(journal: Journal, data_dir: Path,
                                                                       make_round, run_once) -> None:
    """A missing model folder: an error answer, the request dropped, the writer still well."""
    journal.append(make_round())
    assert run_once().returncode == EXIT_OK
    request_commit(data_dir, "ghost", data_dir / "models" / "ghost")
    assert run_once().returncode == EXIT_OK
    outcome = commit_outcome(data_dir, "ghost")
    assert outcome is not None and "training.json" in outcome["error"]
    assert not (requests_dir(data_dir) / "ghost.json").exists()


def test_a_writer_left_on_an_model_branch_returns_to_main(journal: Journal, settings: WriterSettings,
                                                          make_round, make_vote, run_once) -> None:
    """A writer that died mid-model (repository on models/x, files staged) goes back to main on start."""
    first = make_round()
    journal.append(first)
    assert run_once().returncode == EXIT_OK
    strand = (
        "import sys; from pathlib import Path; from storage.oxen_repo import OxenRepository\n"
        "repo = OxenRepository(Path(sys.argv[1])).open_or_init(); repo.checkout('models/x', create=True)\n"
        "p = repo.path / 'models' / 'x' / 'half.txt'; p.parent.mkdir(parents=True); p.write_text('half')\n"
        "repo.add(p)\n")
    done = subprocess.run([sys.executable, "-c", strand, str(settings.repo)], cwd=ROOT, env=writer_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    journal.append(make_vote(first.round_id, 1, 10))
    result = run_once()
    assert result.returncode == EXIT_OK, result.stderr
    main = committed_rows(settings.repo)
    assert main["branch"] == "main" and main["models"] == {}
    assert [v["user_id"] for v in main["tables"]["votes"]] == [10]
    assert not (settings.repo / "models" / "x").exists()


def test_two_models_keep_their_own_content(journal: Journal, settings: WriterSettings, data_dir: Path,
                                            make_round, run_once) -> None:
    """Each branch lists only its own model (oxenai 0.65.1 mixes them up when `models/` is new on both)."""
    journal.append(make_round())
    assert run_once().returncode == EXIT_OK
    for name in ("one", "two"):
        request_commit(data_dir, name, fake_model(data_dir, name))
        assert run_once().returncode == EXIT_OK
        assert "commit_id" in (commit_outcome(data_dir, name) or {})
    for name in ("one", "two"):
        files = committed_rows(settings.repo, f"models/{name}")["models"]
        assert {path.split("/")[1] for path in files} == {"README.md", name}, files


def test_a_retrained_model_replaces_the_first_one_on_its_branch(journal: Journal, settings: WriterSettings,
                                                                 data_dir: Path, make_round, run_once) -> None:
    """Train `live`, delete its folder, train `live` again: the branch gets a new commit holding exactly the new
    folder (other weights, a file fewer), not the first adapter's commit answered again (#23.1)."""
    journal.append(make_round())
    assert run_once().returncode == EXIT_OK
    folder = fake_model(data_dir, "live")
    (folder / "notes.txt").write_text("only in the first run\n")
    request_commit(data_dir, "live", folder)
    assert run_once().returncode == EXIT_OK
    first = commit_outcome(data_dir, "live")
    assert first is not None and "commit_id" in first, first

    shutil.rmtree(folder)
    folder = fake_model(data_dir, "live")
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"other weights, seed 7")
    request_commit(data_dir, "live", folder)
    assert run_once().returncode == EXIT_OK
    second = commit_outcome(data_dir, "live")
    assert second is not None and "commit_id" in second, second
    assert second["commit_id"] != first["commit_id"], "the first adapter's commit was answered again"

    want = {f"models/live/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    branch = committed_rows(settings.repo, "models/live")
    assert {path: sha for path, sha in branch["models"].items() if path != "models/README.md"} == want
    assert len([m for m in branch["log"] if m.startswith("refinery model live:")]) == 2
