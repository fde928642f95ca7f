"""The `refinery` command: run the bot, play the offline demo, inspect the log, export datasets, train."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from bot.cli import add_log_level, os_error_line, parse
from bot.config import Config, ConfigError, Secrets, load_config
from bot.logs import setup_logging
from pipeline.model_errors import ModelUnavailable
from storage.exports import FORMATS

log = logging.getLogger("refinery")
_STOP_SLACK_S = 10.0  # beyond the bounded stages of a stop (see _serve)


def build_parser() -> argparse.ArgumentParser:
    """The `refinery` command line: every sub-command and its options (the tests walk it)."""
    parser = argparse.ArgumentParser(prog="refinery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start the bot (needs DISCORD_TOKEN in the environment)")
    run.add_argument("--config", type=Path, default=None, help="config file (default: ./config.toml)")

    doctor = commands.add_parser("doctor", help="check the set-up, one line each: token, Discord, GPU, models, "
                                 "storage, Redis, export key (exit 1 if any fails)")
    doctor.add_argument("--config", type=Path, default=None, help="config file (default: ./config.toml)")

    demo = commands.add_parser("demo", help="the full loop offline: tiny model, local Discord server")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="where the demo keeps its files")

    log_cmd = commands.add_parser("log", help="the interaction log")
    log_sub = log_cmd.add_subparsers(dest="log_command", required=True)
    status = log_sub.add_parser("status", help="journal size, unsynced events, last commit and push")
    status.add_argument("--config", type=Path, default=None)

    worker = commands.add_parser("worker", help="a GPU worker for the Redis queue (the bot sets queue.redis_url)")
    worker.add_argument("--redis", default="", help="Redis URL, e.g. redis://host:6379/0 (default: queue.redis_url)")
    worker.add_argument("--config", type=Path, default=None, help="config file for [model] (default: ./config.toml)")
    worker.add_argument("--prefix", default="refinery", help="key prefix shared with the bot (default: refinery)")
    worker.add_argument("--batch-size", type=int, default=1, help="run up to N compatible waiting jobs as one call")
    worker.add_argument("--claim-after", type=float, default=60.0,
                        help="take over a job whose worker has been silent this many seconds (default: 60)")
    worker.add_argument("--name", default=None, help="this worker's name in Redis (default: host-pid)")

    export = commands.add_parser(
        "export", help="write a dataset export from the journal (for moderators outside Discord)",
        description="Replay the journal into a training-ready export folder (the formats' files, images, README.md "
        "dataset card, export.json) and commit that folder as its own Oxen repository (the export and nothing "
        "else). Needs REFINERY_EXPORT_KEY (use the bot's, so pseudonyms match its exports). It only reads the "
        "journal, so it may run beside the bot.")
    export.add_argument("--format", default="", help=f"comma-separated, some of {','.join(FORMATS)} (default: all)")
    export.add_argument("--since", help="first day, YYYY-MM-DD (UTC)")
    export.add_argument("--until", help="last day, YYYY-MM-DD (UTC, included)")
    export.add_argument("--channel", type=int, help="only rounds made in this channel (id)")
    export.add_argument("--min-votes", type=int, default=0, help="only rounds with at least N voters")
    export.add_argument("--include-flagged", action="store_true", help="keep flagged rounds")
    export.add_argument("--include-edit-rounds", action="store_true",
                        help="also instruct/inpaint rounds in pairs and kto (their caption is the reply)")
    export.add_argument("--no-oxen", action="store_true", help="write the folder only, no Oxen repository")
    export.add_argument("--name", help="the export's name (default: export-<UTC time>)")
    export.add_argument("--out", type=Path, help="the folder to create (default: <data_dir>/exports/<name>)")
    export.add_argument("--config", type=Path, default=None)

    from bot.arena_cli import add_parser as add_arena_parser
    from bot.toy_cli import add_parser as add_toy_parser
    from bot.train import add_parser as add_train_parser

    add_train_parser(commands)
    add_arena_parser(commands)
    add_toy_parser(commands)
    add_log_level(parser)  # last: on every sub-command too, before or after its name
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    # No tqdm monitor thread: a daemon thread still alive while the interpreter finalises (with torch's
    # native libraries loaded) can crash the exit of a command that has done its work.
    import tqdm

    tqdm.tqdm.monitor_interval = 0
    secrets = Secrets.from_env()
    setup_logging(args.log_level, [secrets.discord_token, secrets.oxen_auth_token, secrets.export_key])
    try:
        if args.command == "run":
            return _run(_config(args.config), secrets)
        if args.command == "doctor":
            from bot.doctor import run_doctor

            path = args.config or (Path("config.toml") if Path("config.toml").exists() else None)
            return run_doctor(_config(args.config), secrets, config_path=path, out=sys.stdout)
        if args.command == "demo":
            from bot.demo import run_demo

            args.out.mkdir(parents=True, exist_ok=True)  # unwritable: one line (OSError below), before any work
            if (args.out / "data").exists():  # a second session would be appended to the first one's log
                print(f"refinery demo: {args.out / 'data'} exists: a demo writes a fresh log; choose another --out "
                      "or remove it", file=sys.stderr)
                return 2
            return asyncio.run(run_demo(args.out))
        if args.command == "log":
            from storage.status import log_status

            config = _config(args.config)
            print(log_status(config.journal_path, config.data_dir, interval_s=config.storage.commit_interval_s))
            return 0
        if args.command == "export":
            return _export(args, _config(args.config), secrets)
        if args.command == "worker":
            return _worker(args, _config(args.config))
        if args.command == "arena":
            from bot.arena_cli import run_report

            return run_report(args, _config(args.config))
        if args.command == "train":
            from bot.train import run_train

            return run_train(args, _config(args.config))
        if args.command == "toy-model":
            from bot.toy_cli import run_toy_model

            return run_toy_model(args)
    except ConfigError as exc:
        print(f"refinery: configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelUnavailable as exc:  # not cached and no hub, a wrong folder: one line that says what to do
        log.debug("refinery %s: a model did not load", args.command, exc_info=True)
        print(f"refinery {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be written or read (--out, --config, data_dir): one line
        log.debug("refinery %s failed", args.command, exc_info=True)
        print(f"refinery {args.command}: {os_error_line(exc)} (--log-level debug shows where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _config(path: Path | None) -> Config:
    if path is None and Path("config.toml").exists():
        path = Path("config.toml")
    return load_config(path)


def _worker(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from bot.app import generator_settings
    from pipeline.diffusers_generator import DiffusersGenerator
    from pipeline.redis_worker import serve

    url = args.redis or config.queue.redis_url
    if not url:
        print("refinery worker: give --redis redis://host:6379/0 or set queue.redis_url in the config", file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.claim_after <= 0:
        print(f"refinery worker: --batch-size must be ≥ 1 and --claim-after > 0 (got {args.batch_size}, "
              f"{args.claim_after})", file=sys.stderr)
        return 2
    settings = generator_settings(config)
    # Warm up (compile) for the batches this worker will really run: --batch-size, not [queue]'s.
    settings = replace(settings, acceleration=replace(settings.acceleration, warmup_batch=args.batch_size))
    return serve(DiffusersGenerator(settings), url, prefix=args.prefix, name=args.name,
                 batch_size=args.batch_size, claim_after_s=args.claim_after)


def _export(args: argparse.Namespace, config: Config, secrets: Secrets) -> int:
    from bot.errors import InvalidInput
    from bot.moderation import KEY_ENV, build, plan_export, pseudonymiser

    if not secrets.export_key:
        print(f"refinery export: set {KEY_ENV} in the environment to the bot's export key (a long random secret "
              "that keys the user pseudonyms); exports never run without it.", file=sys.stderr)
        return 2
    if not config.journal_path.is_file():
        print(f"refinery export: no journal at {config.journal_path} (check --config)", file=sys.stderr)
        return 2
    try:
        plan = plan_export(formats=args.format, since=args.since, until=args.until, channel_id=args.channel,
                           min_votes=args.min_votes, include_flagged=args.include_flagged, name=args.name,
                           now=time.time(), include_edit_rounds=args.include_edit_rounds)
        out = args.out or config.data_dir / "exports" / plan.name
        result = build(config, plan, out, pseudonymiser(secrets.export_key), progress=ProgressBar(sys.stderr))
    except (InvalidInput, FileExistsError, ValueError) as exc:
        print(f"refinery export: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {fmt}" for fmt, n in result.counts.items())
    print(f"export {plan.name}: {counts}")
    print(f"folder: {result.folder}")
    if not args.no_oxen:
        from storage.export_repo import commit_export

        outcome = commit_export(result.folder, plan.name, config_dir=config.data_dir / ".oxen-config")
        if "error" in outcome:
            print(f"refinery export: the folder is written but not committed to Oxen: {outcome['error']}",
                  file=sys.stderr)
            return 1
        print(f"oxen: the folder is its own repository, commit {outcome['commit_id']}")
    return 0


class ProgressBar:
    """`progress(i, total)` for build_dataset, drawn by tqdm on `stream` (rate and ETA included)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, unit="round", desc="exporting", file=self.stream, mininterval=0.1)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()


def _run(config: Config, secrets: Secrets) -> int:
    if not secrets.discord_token:
        print("refinery: set DISCORD_TOKEN in the environment to your bot's token "
              "(Discord developer portal → your application → Bot → Reset Token).", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config, secrets))


async def _serve(config: Config, secrets: Secrets) -> int:
    from bot.app import StartupError, running_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Each stage of a stop is bounded ([discord] stop_timeout_s, then [storage] stop_flush_s for the
    # Oxen writer); this deadline also covers what is not (a GPU step, a stuck thread), so the
    # process always ends well inside a service manager's stop timeout (systemd: 90 s).
    deadline_s = config.discord.stop_timeout_s + config.storage.stop_flush_s + _STOP_SLACK_S
    stopping_since: list[float] = []

    def on_signal(signum: signal.Signals) -> None:
        if not stop.is_set():
            stopping_since.append(time.monotonic())
            log.info("%s: stopping (the process ends within %.0f s)", signum.name, deadline_s)
            _exit_after(deadline_s)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    async with running_app(config, secrets) as app:
        # What start-up built (torch, diffusers, the model: ~500k objects) lives as long as the process;
        # frozen, full garbage collections skip it instead of pausing the event loop for up to ~0.2 s
        # (measured by bench/discord_queue.py). Only here: tests start many bots in one process.
        gc.collect()
        gc.freeze()
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, app.task}, return_when=asyncio.FIRST_COMPLETED)
        if app.task.done() and app.task.exception() is not None:
            error = StartupError(str(app.task.exception()))
            print(f"refinery: the bot stopped: {error}", file=sys.stderr)
            return 1
    if stopping_since:
        log.info("stopped in %.1f s", time.monotonic() - stopping_since[0])
    return 0


def _exit_after(seconds: float) -> None:
    """End the process in `seconds` whatever still runs (a daemon timer thread, so it does not
    itself keep the process alive). Nothing acknowledged is lost: the journal is durable."""

    def hard_exit() -> None:
        log.error("stop deadline (%.0f s) passed: exiting now; the next start commits what Oxen lacks", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
