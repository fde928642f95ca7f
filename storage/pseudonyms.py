"""Pseudonyms for exported datasets: a keyed hash stands in for every Discord user id.

A plain hash of a snowflake is reversible by brute force (user ids are public and few), so the
pseudonym is an HMAC under a secret key (env REFINERY_EXPORT_KEY, read by the caller). The same key
gives the same pseudonym in every export, so rows of one user can be joined across exports; a new
key unlinks them. The key itself never appears in an export, a log line or a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

PREFIX = "u_"
MIN_KEY_BYTES = 16  # as the dashboard's key: a shorter one can be guessed, and with it every pseudonym undone
DIGEST_CHARS = 16  # 64 bits: collisions stay negligible for any community size we will see
MENTION = re.compile(r"<@!?(\d+)>")  # a Discord user mention carries the raw id
FORGOTTEN_MENTION = "@someone"  # stands in for a mention of a user who ran /forget-me


class ExportKeyMissingError(ValueError):
    """No usable pseudonymisation key was configured (none, or a short one), so an export must not run."""


class ExportKeyTooShortError(ExportKeyMissingError):
    """REFINERY_EXPORT_KEY is set but shorter than MIN_KEY_BYTES."""


class Pseudonymiser:
    """Maps user ids to stable pseudonyms, `u_` + 16 hex chars of HMAC-SHA256(key, str(user_id))."""

    def __init__(self, key: bytes, forgotten: Iterable[int] = ()) -> None:
        if not key:
            raise ExportKeyMissingError("the pseudonymisation key is empty")
        self._key = key
        self._forgotten = frozenset(int(u) for u in forgotten)
        self._cache: dict[int, str] = {}

    @classmethod
    def from_secret(cls, secret: str) -> Pseudonymiser:
        """Build one from the REFINERY_EXPORT_KEY value; refuse an empty or blank secret, because
        exporting without a key would mean either raw ids or unkeyed (reversible) hashes, and one under
        MIN_KEY_BYTES (UTF-8). The messages name the variable, never the value."""
        key = (secret or "").strip().encode("utf-8")
        if not key:
            raise ExportKeyMissingError(
                "REFINERY_EXPORT_KEY is empty: set it to a long random secret before exporting datasets"
            )
        if len(key) < MIN_KEY_BYTES:
            raise ExportKeyTooShortError(f"REFINERY_EXPORT_KEY is shorter than {MIN_KEY_BYTES} bytes: set it to a "
                                         "long random secret (e.g. `openssl rand -hex 32`)")
        return cls(key)

    def user(self, user_id: int) -> str:
        cached = self._cache.get(user_id)
        if cached is None:
            digest = hmac.new(self._key, str(int(user_id)).encode("ascii"), hashlib.sha256).hexdigest()
            cached = self._cache[user_id] = PREFIX + digest[:DIGEST_CHARS]
        return cached

    def forgetting(self, user_ids: Iterable[int]) -> Pseudonymiser:
        """The same pseudonyms, but mentions of `user_ids` (who ran /forget-me) become "@someone": their
        stable pseudonym would link other people's prompts to the rows of theirs in earlier exports."""
        return Pseudonymiser(self._key, self._forgotten | frozenset(user_ids))

    def scrub(self, text: str | None) -> str | None:
        """Replace user mentions (`<@123>`, `<@!123>`) in free text by `@<pseudonym>` (by "@someone"
        for a forgotten user)."""
        return None if text is None else MENTION.sub(self._mention, text)

    def _mention(self, match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        return FORGOTTEN_MENTION if user_id in self._forgotten else "@" + self.user(user_id)

    def __repr__(self) -> str:
        return "Pseudonymiser(key=<hidden>)"


def from_secret(secret: str) -> Pseudonymiser:
    """Module-level spelling of `Pseudonymiser.from_secret`."""
    return Pseudonymiser.from_secret(secret)
