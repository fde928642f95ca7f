"""Command-line plumbing shared by every `refinery` sub-command: the log level, argument errors that
name the sub-command they belong to, and OS errors as one line instead of a traceback."""

from __future__ import annotations

import argparse

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str) -> str:
    """`--log-level` in any case (`debug`, `Debug`, `DEBUG`)."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level: use one of {', '.join(LOG_LEVELS).lower()}")
    return level


def add_log_level(parser: argparse.ArgumentParser, default: str = "INFO", *, top: bool = True) -> None:
    """`--log-level` on `parser` and on every sub-command under it, so it works before or after the
    sub-command's name. Below the top it defaults to SUPPRESS: absent, it leaves the top's value."""
    help_text = f"one of {', '.join(LOG_LEVELS).lower()} (default: {default.lower()})"
    parser.add_argument("--log-level", type=log_level, default=default if top else argparse.SUPPRESS,
                        help=help_text)
    for sub in _sub_parsers(parser):
        add_log_level(sub, default, top=False)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like `parse_args`, but an unknown argument is reported with the usage of the sub-command it was
    given to (`refinery run --bogus` shows `refinery run`'s usage, not the top level's)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def os_error_line(error: OSError) -> str:
    """`[Errno 20] Not a directory: 'x/out'` as `Not a directory: x/out`."""
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__


def _sub_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for sub in dict.fromkeys(action.choices.values())]


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest sub-command parser that `args` went through."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _chosen(action.choices[name], args)
    return parser
