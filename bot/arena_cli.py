"""`refinery arena report [--name]`: the arena's numbers from the journal, outside Discord (read-only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bot.config import Config


def add_parser(commands: Any) -> None:
    arena = commands.add_parser("arena", help="blinded A/B rounds: is the adapter preferred?")
    sub = arena.add_subparsers(dest="arena_command", required=True)
    report = sub.add_parser("report", help="rounds the adapter led, 95 %% interval, sign test, rounds still needed")
    report.add_argument("--name", help="only this adapter (default: every adapter that had arena rounds)")
    report.add_argument("--config", type=Path, default=None)


def run_report(args: argparse.Namespace, config: Config) -> int:
    from storage.arena import arena_report, read_arena
    from storage.journal import Journal

    if not config.journal_path.is_file():
        print(f"refinery arena: no journal at {config.journal_path} (check --config)", file=sys.stderr)
        return 2
    journal = Journal(config.journal_path)
    try:
        reports = arena_report(read_arena(journal, config.data_dir), args.name)
    finally:
        journal.close()
    if not reports:
        which = f" for adapter {args.name!r}" if args.name else ""
        print(f"no arena rounds{which} yet (a moderator starts them with /arena start or [arena] adapter)")
        return 0
    for report in reports:
        print("\n".join(line.replace("**", "") for line in report.lines()))
    return 0
