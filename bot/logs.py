"""Logging set-up: one line per event, and secrets scrubbed from every line as a last defence."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable


class RedactSecrets(logging.Filter):
    """Replaces any secret value that slipped into a log line (message or traceback) with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        cleaned = _scrub(text, self.secrets)
        if cleaned != text:
            record.msg, record.args = cleaned, None
        if record.exc_text:
            record.exc_text = _scrub(record.exc_text, self.secrets)
        return True


class DropHarmless(logging.Filter):
    """Drops one known-harmless warning (matched by a fragment of its text) on the logger that emits it."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


# Start-up warnings that read like failures but are not (issue #17.8), as (emitting logger, fragment).
# Each is dropped where it is emitted, by its exact wording, so every other warning of those loggers stays.
HARMLESS_WARNINGS = (
    # No torchvision: transformers falls back to the PIL image processors, which is what diffusers'
    # Stable Diffusion pipelines (their feature extractor) use anyway.
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
    # from_pipe(dtype=...) casts with .to(dtype) on purpose (see pipeline/diffusers_generator.py); diffusers
    # then warns even when no module needs float32 (the list is empty). A non-empty list still shows.
    ("diffusers.models.modeling_utils", "that should be kept in float32: []."),
)


def silence_harmless_warnings() -> None:
    for name, fragment in HARMLESS_WARNINGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropHarmless) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(DropHarmless(fragment))


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("discord.gateway", "discord.http", "httpx", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    silence_harmless_warnings()
