"""Who is logged in: one-time login links, session cookies and CSRF tokens, all HMAC-signed with one key.

The key is REFINERY_DASHBOARD_KEY, or 32 random bytes per start (then every link and session ends at a
restart). Each purpose signs under its own prefix, so a login token is never a valid session or CSRF
token. A login link carries (user, guild, expiry, nonce); the nonce is claimed in a small SQLite ledger
on first use, so a link works once even across restarts with a fixed key. A signed session cookie opens
pages only while its session is in the session ledger (same file): logging out removes it there, so a
copy of the cookie dies with it. Nothing here is logged: a link or cookie in a log line would be a login
for whoever reads the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LOGIN_TTL_S = 600.0  # a login link works for 10 minutes, once
COOKIE = "refinery_session"


class LoginRefused(Exception):
    """A login link that is forged, expired or already used (the message says which, for the page)."""


@dataclass(frozen=True)
class Identity:
    """A signed-in moderator: the Discord user and the guild whose moderators they belong to."""

    user_id: int
    guild_id: int
    expires_at: float
    session_id: str


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError(f"the dashboard key must be at least 16 bytes, got {len(key)}")
        self._key = key

    @classmethod
    def from_secret(cls, secret: str) -> Signer:
        """REFINERY_DASHBOARD_KEY, or a random key for this start when it is empty."""
        return cls(secret.encode("utf-8") if secret else secrets.token_bytes(32))

    def derive(self, purpose: str) -> bytes:
        return hmac.new(self._key, f"derive:{purpose}".encode(), hashlib.sha256).digest()

    def sign(self, purpose: str, payload: str) -> str:
        mac = hmac.new(self._key, f"{purpose}:{payload}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def signed(self, purpose: str, payload: str) -> str:
        return f"{payload}.{self.sign(purpose, payload)}"

    def open(self, purpose: str, token: str) -> list[str] | None:
        """The payload's dot-separated fields if `token` was signed here for `purpose`, else None."""
        payload, _, mac = token.rpartition(".")
        if not payload or not _same_token(mac, self.sign(purpose, payload)):
            return None
        return payload.split(".")

    def __repr__(self) -> str:
        return "Signer(key=<hidden>)"


def login_token(signer: Signer, user_id: int, guild_id: int, now: float) -> str:
    return signer.signed("login", f"{user_id}.{guild_id}.{int(now + LOGIN_TTL_S)}.{secrets.token_urlsafe(12)}")


def read_login(signer: Signer, token: str, now: float) -> tuple[int, int, str, float]:
    """(user id, guild id, nonce, expiry) of a valid, unexpired link; LoginRefused otherwise."""
    fields = signer.open("login", token)
    if fields is None or len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
        raise LoginRefused("This login link is not one the bot made.")
    user_id, guild_id, expires, nonce = int(fields[0]), int(fields[1]), float(fields[2]), fields[3]
    if now > expires:
        raise LoginRefused("This login link has expired (links work for 10 minutes).")
    return user_id, guild_id, nonce, expires


def session_cookie(signer: Signer, user_id: int, guild_id: int, now: float, hours: float) -> tuple[str, Identity]:
    identity = Identity(user_id, guild_id, now + hours * 3600, secrets.token_urlsafe(16))
    value = signer.signed("session", f"{user_id}.{guild_id}.{int(identity.expires_at)}.{identity.session_id}")
    return value, identity


def read_session(signer: Signer, value: str, now: float) -> Identity | None:
    fields = signer.open("session", value)
    if fields is None or len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
        return None
    identity = Identity(int(fields[0]), int(fields[1]), float(fields[2]), fields[3])
    return identity if now < identity.expires_at else None


def csrf_token(signer: Signer, identity: Identity) -> str:
    """Bound to the session: a token from another session (or none) is refused."""
    return signer.sign("csrf", identity.session_id)


def csrf_ok(signer: Signer, identity: Identity, given: str | None) -> bool:
    return bool(given) and _same_token(str(given), csrf_token(signer, identity))


def _same_token(given: str, expected: str) -> bool:
    """Constant-time equality. Our tokens are ASCII: anything else is a forgery, and must be refused before
    compare_digest, which raises TypeError on a non-ASCII str (a 500 instead of a 403)."""
    return given.isascii() and hmac.compare_digest(given, expected)


class LoginLedger:
    """Nonces of login links already used (until they would have expired anyway). Blocking."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS used_logins(nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL)")

    def claim(self, nonce: str, expires_at: float) -> bool:
        """True the first time a nonce is claimed, False ever after."""
        with self._lock:
            self._db.execute("DELETE FROM used_logins WHERE expires_at < ?", (time.time() - 60,))
            try:
                self._db.execute("INSERT INTO used_logins VALUES (?, ?)", (nonce, expires_at))
            except sqlite3.IntegrityError:
                return False
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SessionLedger:
    """The sessions that have not been ended: a signed cookie alone proves only that the bot once made it.

    Writes are blocking (call them in a thread); `live` and `count` read a copy kept in memory, so the check
    on every request costs no I/O. A write replaces that copy whole instead of changing it, so the event
    loop never reads a dict while a thread changes it. Expired sessions are dropped as new ones start."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions(session_id TEXT PRIMARY KEY, user_id INTEGER NOT NULL, "
                         "guild_id INTEGER NOT NULL, expires_at REAL NOT NULL)")
        self._db.execute("DELETE FROM sessions WHERE expires_at < ?", (time.time(),))
        self._live: dict[str, tuple[int, int, float]] = {
            sid: (user, guild, expires) for sid, user, guild, expires in self._db.execute("SELECT * FROM sessions")}

    def add(self, identity: Identity) -> None:
        with self._lock:
            now = time.time()
            self._db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            self._db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)",
                             (identity.session_id, identity.user_id, identity.guild_id, identity.expires_at))
            live = {sid: row for sid, row in self._live.items() if row[2] >= now}
            self._live = live | {identity.session_id: (identity.user_id, identity.guild_id, identity.expires_at)}

    def live(self, identity: Identity) -> bool:
        found = self._live.get(identity.session_id)
        return found is not None and found[:2] == (identity.user_id, identity.guild_id)

    def count(self, user_id: int, now: float) -> int:
        """The user's sessions that have not ended or expired (in any guild)."""
        return sum(1 for user, _, expires in self._live.values() if user == user_id and expires > now)

    def end(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            self._live = {sid: row for sid, row in self._live.items() if sid != session_id}

    def end_user(self, user_id: int) -> int:
        """End every session of the user, in every guild ("log out everywhere"); how many there were."""
        with self._lock:
            ended = self._db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,)).rowcount
            self._live = {sid: row for sid, row in self._live.items() if row[0] != user_id}
            return ended

    def close(self) -> None:
        with self._lock:
            self._db.close()
