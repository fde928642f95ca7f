"""`refinery train`: the community's votes become a LoRA adapter, versioned on the Oxen branch `models/<name>`.

The command wires three parts together and decides nothing itself: the examples come from the log
through the exports' own rules (`storage.training_data`), the training is `pipeline.training`, and the
commit is the Oxen writer's (`storage.model_branches`), because only that process may open the log's
repository. When the bot runs, its writer takes the request; when it does not, this command runs the
writer once (`python -m storage.oxen_writer --once`) to commit the data and then the adapter.

Ctrl-C (SIGINT) or SIGTERM finishes the step in hand, saves a checkpoint and prints how to `--resume`;
a checkpoint is also saved every `--checkpoint-every` steps, so a run killed outright (SIGKILL, a crash, a
lost machine) resumes from its last one. A folder with neither an adapter nor a checkpoint (a run killed
before its first) does not hold on to its name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import filelock

from bot.config import Config
from pipeline.adapters import LORA_FILE

EXIT_INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"; 128 + 15 for SIGTERM
CHECKPOINT_EVERY = 25  # steps: a killed SD 1.5 run loses a few seconds of GPU time, saving costs ~1 %
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SELECTION_FILE = "selection.json"  # the journal event the run's examples were read through


def add_parser(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="train a LoRA adapter on the community's votes (Diffusion-DPO or KTO)",
        description=__doc__.split("\n\n")[0])
    train.add_argument("--name", required=True, help="the adapter's name: folder <data_dir>/models/<name>, "
                                                     "Oxen branch models/<name>")
    train.add_argument("--method", choices=("dpo", "kto"), default="dpo",
                       help="dpo: preference pairs within rounds (default); kto: liked/disliked images")
    train.add_argument("--since", help="first day, YYYY-MM-DD (UTC)")
    train.add_argument("--until", help="last day, YYYY-MM-DD (UTC, included)")
    train.add_argument("--channel", type=int, help="only rounds made in this channel (id)")
    train.add_argument("--min-votes", type=int, default=0, help="only rounds with at least N voters")
    train.add_argument("--include-flagged", action="store_true", help="keep flagged rounds")
    train.add_argument("--min-examples", type=int, default=16,
                       help="refuse to train on fewer usable examples (default: 16)")
    train.add_argument("--held-out", type=float, default=0.1,
                       help="share of prompts held out to measure accuracy (default: 0.1)")
    train.add_argument("--steps", type=int, default=500)
    # Unset tuning flags take the model's own defaults (pipeline/training/defaults.py): its
    # refinery_train.json and native resolution, else SD 1.5's recipe (shown in the help).
    train.add_argument("--rank", type=int, default=None, help="default: the model's, else 8")
    train.add_argument("--lr", type=float, default=None, help="default: the model's, else 1e-5")
    train.add_argument("--beta", type=float, default=None,
                       help="default: the model's, else 2500 for dpo, 1000 for kto")
    train.add_argument("--batch", type=int, default=None,
                       help="pairs (dpo) or images (kto) per micro-batch; default: the model's, else 4")
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--resolution", type=int, default=None,
                       help="default: the model's native size (512 for SD 1.5)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-every", type=int, default=50, help="measure held-out accuracy every N steps")
    train.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="N",
                       help=f"save a checkpoint every N steps, so that a killed run can --resume (default: "
                            f"{CHECKPOINT_EVERY}; 0: only when stopped by Ctrl-C or SIGTERM)")
    train.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, ~30%% slower")
    train.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run of this --name")
    train.add_argument("--config", type=Path, default=None)


def fail(message: str, code: int = 2) -> int:
    print(f"refinery train: {message}", file=sys.stderr)
    return code


def run_train(args: argparse.Namespace, config: Config, *, stop: threading.Event | None = None) -> int:
    from storage.export_repo import NAME

    if not NAME.match(args.name):
        return fail(f"--name {args.name!r} must be 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    # One run per name from the folder check to the commit: two at once would train into one folder and
    # each report its own accuracy for whichever adapter landed last. An flock: the kernel drops it with
    # the process, so a killed run never leaves its name locked.
    lock = filelock.FileLock(lock_path(config, args.name))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return fail(f"another `refinery train --name {args.name}` is running (it holds {lock.lock_file}): "
                    "wait for it to end, or choose another --name")
    try:
        return _run_locked(args, config, stop)
    finally:
        lock.release()


def lock_path(config: Config, name: str) -> Path:
    """The file a run of `name` holds an flock on, beside (not in) the adapter's folder."""
    config.models_path.mkdir(parents=True, exist_ok=True)
    return config.models_path / f".{name}.lock"


def _run_locked(args: argparse.Namespace, config: Config, stop: threading.Event | None) -> int:
    from bot.errors import InvalidInput
    from bot.moderation import parse_day
    from pipeline.training.checkpoint import CHECKPOINT_DIR, recover_checkpoint
    from storage.exports import ExportFilters
    from storage.journal import Journal
    from storage.training_data import select_examples

    out = config.models_path / args.name
    checkpoint = out / CHECKPOINT_DIR
    pinned = out / SELECTION_FILE
    recover_checkpoint(checkpoint)  # a run killed mid-save left its last checkpoint aside
    if args.resume and not checkpoint.is_dir():
        return fail(f"nothing to resume: {checkpoint} does not exist (run it again without --resume)")
    # Only a finished adapter or a checkpoint holds a name: what a run killed before its first checkpoint
    # leaves (selection.json, a half-written checkpoint) is started over.
    if not args.resume and (out / LORA_FILE).is_file():
        return fail(f"an adapter named {args.name!r} exists already at {out}; choose another --name")
    if not args.resume and checkpoint.is_dir():
        return fail(f"a stopped run of {args.name!r} has a checkpoint in {checkpoint}: add --resume to continue "
                    f"it, or delete {out} to start over")
    if not config.journal_path.is_file():
        return fail(f"no journal at {config.journal_path} (check --config)")
    try:
        start, end = parse_day(args.since, "since"), parse_day(args.until, "until", end=True)
        filters = ExportFilters(since=start, until=end, channel_id=args.channel, min_votes=args.min_votes,
                                include_flagged=args.include_flagged)
        settings = _settings(args, config.model.id)
    except (InvalidInput, ValueError) as error:
        return fail(str(error))

    # A resumed run reads the log as it was when the run started: votes cast since would change the examples,
    # which the trainer rightly refuses to resume on.
    through = None
    if args.resume and pinned.is_file():
        try:
            through = json.loads(pinned.read_text(encoding="utf-8"))["journal_seq"]
        except (ValueError, KeyError, TypeError):
            through = None
        if not isinstance(through, int) or isinstance(through, bool) or through < 0:
            return fail(f"cannot resume: {pinned} is damaged (no journal event number in it); delete {out} and "
                        "run the same command without --resume to start over")
    journal = Journal(config.journal_path)
    try:
        data = select_examples(journal, config.data_dir, filters, args.method, held_out_fraction=args.held_out,
                               through_seq=through)
    finally:
        journal.close()
    unit = "preference pairs" if args.method == "dpo" else "rated images"
    left = "; ".join(f"{reason}: {n}" for reason, n in data.left_out.items()) or "nothing"
    if len(data.train) < args.min_examples:
        return fail(f"only {len(data.train)} usable {unit} for training (need --min-examples {args.min_examples}); "
                    f"left out: {left}")
    if args.method == "kto" and len({e.desirable for e in data.train}) < 2:  # type: ignore[union-attr]
        return fail("kto needs both liked and disliked images among the training examples")
    rounds = f"{data.rounds_used} round" + ("" if data.rounds_used == 1 else "s")
    print(f"training {args.method} on {len(data.train)} {unit} ({len(data.held_out)} held out) from {rounds}, "
          f"the log through event {data.journal_seq}; left out: {left}")
    every = (f"a checkpoint every {settings.checkpoint_every} steps" if settings.checkpoint_every
             else "no periodic checkpoints (--checkpoint-every 0)")
    print(f"{every} in {checkpoint}; Ctrl-C or SIGTERM saves one and stops, --resume continues")
    data_commit = sync_journal(config, data.journal_seq)
    out.mkdir(parents=True, exist_ok=True)
    pinned.write_text(json.dumps({"journal_seq": data.journal_seq}) + "\n", encoding="utf-8")

    from pipeline.training import CheckpointDamaged, InsufficientMemory, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stop = stop or threading.Event()
    received: list[int] = []
    previous = _on_stop_signals(stop, received)
    bar = _ProgressBar()
    try:
        result = train(config.model.id, data.train, data.held_out, out, settings, progress=bar, stop=stop,
                       resume=args.resume, device=args.device, local_files_only=config.model.local_files_only)
    except InsufficientMemory as error:
        return fail(str(error))
    except CheckpointDamaged as error:
        return fail(f"cannot resume: {error}; delete {checkpoint} and run the same command without --resume to "
                    f"start over (its steps are lost)")
    except ValueError as error:  # a resume with other settings or data, a bad example
        return fail(str(error))
    finally:
        bar.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if result.interrupted:
        print(f"stopped at step {result.steps_done} of {settings.steps}; checkpoint saved in {result.checkpoint}.\n"
              f"Continue with the same options and --resume: refinery train --name {args.name} --resume ...")
        return 128 + received[0] if received else EXIT_INTERRUPTED

    pinned.unlink(missing_ok=True)  # finished: training.json says which event the data was read through
    meta = training_record(args.name, config, data.summary(), data_commit, filters.describe(), result)
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(meta), encoding="utf-8")
    print(f"adapter: {result.lora}  (held-out implicit accuracy {_pct(meta['held_out_accuracy_start'])} → "
          f"{_pct(meta['held_out_accuracy'])})")
    outcome = commit_model(config, args.name, out)
    if "error" in outcome or "commit_id" not in outcome:
        return fail(f"the adapter is saved but not committed to Oxen: {outcome.get('error', 'no answer')}", 1)
    print(f"oxen: branch {outcome['branch']}, commit {outcome['commit_id']}")
    return 0


def _settings(args: argparse.Namespace, model: str) -> Any:
    from pipeline.training import TrainSettings
    from pipeline.training.defaults import KEYS, model_defaults

    defaults = model_defaults(model)
    tuned = {key: defaults[key] if getattr(args, key) is None else getattr(args, key) for key in KEYS}
    return TrainSettings(method=args.method, steps=args.steps, grad_accum=args.grad_accum, seed=args.seed,
                         gradient_checkpointing=args.gradient_checkpointing, eval_every=args.eval_every,
                         checkpoint_every=args.checkpoint_every or None,
                         **tuned).check()


def _on_stop_signals(stop: threading.Event, received: list[int]) -> dict[int, Any]:
    """Ctrl-C or SIGTERM (a service manager stopping it, `kill`) asks the loop to stop after its step and save
    a checkpoint; a second signal still interrupts at once. The previous handlers, to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping after this step; saving a checkpoint…", file=sys.stderr)
        received.append(signum)
        stop.set()

    return {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}


class _ProgressBar:
    """tqdm's bar with the loss and implicit accuracies (train, held-out); it/s and ETA are tqdm's own."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __call__(self, progress: Any) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=progress.steps, initial=progress.step - 1, unit="step", file=sys.stderr,
                             dynamic_ncols=True)
        self._bar.n = progress.step
        held = "-" if progress.held_out_accuracy is None else f"{progress.held_out_accuracy:.2f}"
        self._bar.set_postfix_str(f"loss {progress.loss:.4f} acc {progress.train_accuracy:.2f} held-out {held}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# -- the Oxen writer: the only process that may open the log's repository ------------------------------
def _writer_once(config: Config, timeout_s: float) -> None:
    from bot.app import writer_settings
    from storage.child_env import child_environment

    argv = replace(writer_settings(config), once=True, remote=None).to_argv()
    subprocess.run([sys.executable, "-m", "storage.oxen_writer", *argv], capture_output=True, timeout=timeout_s,
                   check=False, cwd=Path(__file__).resolve().parents[1], env=child_environment())


def sync_journal(config: Config, seq: int, timeout_s: float = 120.0) -> str | None:
    """Get the log through `seq` into Oxen; its commit id (None if that took too long)."""
    from storage.journal import Journal
    from storage.writer_settings import FLUSH_FILE, writer_running

    journal = Journal(config.journal_path)
    try:
        if journal.synced_through() < seq:
            if writer_running(config.oxen_repo_path):  # the bot's writer: ask it for a commit now
                (config.data_dir / FLUSH_FILE).touch()
                deadline = time.monotonic() + timeout_s
                while journal.synced_through() < seq and time.monotonic() < deadline:
                    time.sleep(0.1)
            else:
                _writer_once(config, timeout_s)
        return journal.commit_of(seq) if journal.synced_through() >= seq else None
    finally:
        journal.close()


def commit_model(config: Config, name: str, folder: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """Have the writer commit `folder` on branch models/<name>; its answer ({"commit_id", ...} or {"error"})."""
    from storage.model_branches import commit_outcome, request_commit, requests_dir
    from storage.writer_settings import writer_running

    (requests_dir(config.data_dir) / f"{name}.done.json").unlink(missing_ok=True)  # a stale answer of a retry
    request_commit(config.data_dir, name, folder)
    if not writer_running(config.oxen_repo_path):
        _writer_once(config, timeout_s)
    deadline = time.monotonic() + timeout_s
    while (outcome := commit_outcome(config.data_dir, name)) is None:
        if time.monotonic() > deadline:
            return {"error": f"the Oxen writer did not answer within {timeout_s:.0f} s (the request stays queued)"}
        time.sleep(0.1)
    return outcome


# -- what is kept beside the adapter ------------------------------------------------------------------
def training_record(name: str, config: Config, data: dict[str, Any], data_commit: str | None,
                    selection: dict[str, Any], result: Any) -> dict[str, Any]:
    """training.json: which data (and its Oxen commit), which settings, what happened. No absolute paths."""
    from pipeline.checkpoints import public_model_id

    lora = Path(result.lora)
    run = result.to_dict()
    for key in ("lora", "checkpoint", "model"):
        run.pop(key, None)
    held = result.curves.held_out
    return {
        "name": name, "method": result.settings.method, "steps_done": result.steps_done,
        "created_at": time.time(), "base_model": public_model_id(config.model.id),
        "adapter_file": lora.name, "adapter_sha256": hashlib.sha256(lora.read_bytes()).hexdigest(),
        "held_out_accuracy_start": held[0][1] if held else None, "held_out_accuracy": result.held_out_accuracy,
        "selection": selection, "data": {**data, "oxen_commit": data_commit}, **run,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def model_card(meta: dict[str, Any]) -> str:
    data, settings = meta["data"], meta["settings"]
    method = "Diffusion-DPO" if meta["method"] == "dpo" else "Diffusion-KTO"
    unit = "preference pairs" if meta["method"] == "dpo" else "rated images"
    left = "; ".join(f"{reason}: {n}" for reason, n in data["left_out"].items()) or "nothing"
    return "\n".join([
        "---", f"base_model: {meta['base_model']}", "library_name: diffusers",
        f"tags: [lora, {meta['method']}, refinery, text-to-image]", "---", "",
        f"# {meta['name']}", "",
        f"A LoRA adapter for `{meta['base_model']}` trained by Refinery with {method} on the votes of a Discord "
        f"community: {data['train_examples']} {unit} for training and {data['held_out_examples']} held out (by "
        f"prompt), from {data['rounds_used']} rounds of the log through event {data['journal_seq']} (Oxen commit "
        f"`{data['oxen_commit'] or 'not yet committed'}`). Left out: {left}.", "",
        f"Held-out implicit accuracy: {_pct(meta['held_out_accuracy_start'])} before training, "
        f"{_pct(meta['held_out_accuracy'])} after {meta['steps_done']} steps "
        "(the share of held-out examples on which the adapter moved toward the community's choice more than "
        "the base model).", "",
        "```python", "pipe = StableDiffusionPipeline.from_pretrained(BASE)",
        f"pipe.load_lora_weights(\"<this folder>\", weight_name=\"{meta['adapter_file']}\")", "```", "",
        "| setting | value |", "|---|---|",
        *(f"| {key} | {value} |" for key, value in settings.items()),
        f"| beta (used) | {meta['beta']} |", "",
        f"Trained on {meta['device']} ({meta['dtype']}) in {meta['seconds']:.0f} s. `training.json` holds the "
        "selection, the data's counts, every setting, the loss and accuracy curves and the library versions.", "",
    ])
