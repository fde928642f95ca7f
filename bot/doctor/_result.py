"""One line per check: its status, its name, and what it found or what to do."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but something will surprise the operator (no GPU, no export key)
    FAIL = "FAIL"  # the bot will not work as configured: `refinery doctor` exits 1
    SKIP = "skip"  # not configured, or cannot be checked without an earlier check


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str

    def line(self, secrets: tuple[str, ...] = ()) -> str:
        """One printable line; any secret that slipped into `detail` is blanked, newlines folded."""
        detail = self.detail
        for secret in secrets:
            if secret:
                detail = detail.replace(secret, "[secret]")
        detail = re.sub(r"\s+", " ", detail).strip()
        return f"{self.status.value:<4}  {self.name:<15} {detail}"


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.OK, detail)


def warn(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.WARN, detail)


def fail(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail)


def skip(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.SKIP, detail)


def first_line(error: BaseException) -> str:
    """An exception as a short phrase, never a traceback."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 240 else text[:237] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
