"""The dashboard's read model: rounds, votes and moderation state indexed for pages, kept beside the journal.

The journal's own query tables answer "this round" and "this message"; a gallery needs "the newest
rounds of channel X with at least N voters, not flagged" over 100,000 rounds without a full scan. So
`RoundIndex` tails the journal's events (a primary-key range scan from where it stopped) into its own
SQLite file, `<data_dir>/dashboard.sqlite3`, with one index per filter. It is derived data: deleting
the file rebuilds it from the journal, and a different journal (another `journal_id`) starts it over.
The bot's journal is only read (its own connection), never written, so appends never wait on it.

/forget-me users are out of it: their rounds are hidden and their votes dropped, as in exports.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.records import ModerationAction, RefinementRequest, Round, RoundPosted, VoteEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds(
    round_id TEXT PRIMARY KEY, created_at REAL NOT NULL, channel_id INTEGER NOT NULL, guild_id INTEGER,
    mode TEXT NOT NULL, source TEXT NOT NULL, prompt TEXT NOT NULL, requester_id INTEGER NOT NULL,
    parent_round_id TEXT, parent_candidate INTEGER, instruction TEXT, adapter TEXT, candidates INTEGER NOT NULL,
    flagged INTEGER NOT NULL DEFAULT 0, removed INTEGER NOT NULL DEFAULT 0, voters INTEGER NOT NULL DEFAULT 0,
    message_id INTEGER, hidden INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rounds_recent ON rounds(hidden, created_at, round_id);
CREATE INDEX IF NOT EXISTS rounds_channel ON rounds(channel_id, created_at);
CREATE INDEX IF NOT EXISTS rounds_mode ON rounds(mode, created_at);
CREATE INDEX IF NOT EXISTS rounds_flagged ON rounds(flagged, created_at);
CREATE INDEX IF NOT EXISTS rounds_parent ON rounds(parent_round_id);
CREATE INDEX IF NOT EXISTS rounds_requester ON rounds(requester_id);
CREATE INDEX IF NOT EXISTS rounds_voters ON rounds(voters, created_at);
CREATE TABLE IF NOT EXISTS votes(
    round_id TEXT NOT NULL, candidate INTEGER NOT NULL, user_id INTEGER NOT NULL,
    PRIMARY KEY(round_id, candidate, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS votes_user ON votes(user_id);
CREATE TABLE IF NOT EXISTS vote_log(
    seq INTEGER PRIMARY KEY, round_id TEXT NOT NULL, candidate INTEGER NOT NULL, user_id INTEGER NOT NULL,
    action TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS vote_log_round ON vote_log(round_id, seq);
CREATE INDEX IF NOT EXISTS vote_log_user ON vote_log(user_id);
CREATE TABLE IF NOT EXISTS forgotten(user_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS counts(kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS daily(day TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY(day, kind));
"""
_COLUMNS = ("round_id, created_at, channel_id, guild_id, mode, source, prompt, requester_id, parent_round_id, "
            "parent_candidate, instruction, adapter, candidates, flagged, removed, voters, message_id")
_BATCH = 2000  # events per index transaction while catching up


@dataclass(frozen=True)
class GalleryFilter:
    """What a gallery page shows; `before` is the keyset cursor (created_at, round_id) of the last row seen."""

    channel_id: int | None = None
    since: float | None = None
    until: float | None = None  # exclusive
    mode: str | None = None
    flagged: bool | None = None  # None = both
    min_voters: int = 0
    before: tuple[float, str] | None = None
    limit: int = 24


@dataclass(frozen=True)
class RoundRow:
    round_id: str
    created_at: float
    channel_id: int
    guild_id: int | None
    mode: str
    source: str
    prompt: str
    requester_id: int
    parent_round_id: str | None
    parent_candidate: int | None
    instruction: str | None
    adapter: str | None
    candidates: int
    flagged: bool
    removed: bool
    voters: int
    message_id: int | None
    votes: tuple[int, ...] = ()  # voters per candidate, 1..candidates
    none_votes: int = 0  # voters who said "none is good"


@dataclass(frozen=True)
class VoteLogEntry:
    seq: int
    candidate: int
    user_id: int
    action: str
    created_at: float


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


class RoundIndex:
    """Tails a journal file into an indexed read model; every method is blocking (call from a thread)."""

    def __init__(self, path: Path | str, journal_path: Path | str) -> None:
        self.path, self.journal_path = Path(path), Path(journal_path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # derived data: a lost tail is read again
        self._db.executescript(_SCHEMA)
        self._journal: sqlite3.Connection | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._journal is not None:
                self._journal.close()

    # -- catching up ------------------------------------------------------------------------------
    def catch_up(self) -> list[Round]:
        """Read every journal event past the last one indexed; returns the new rounds (oldest first)."""
        with self._lock:
            if not self.journal_path.exists():
                return []
            if self._journal is None:
                self._journal = sqlite3.connect(self.journal_path, check_same_thread=False)
                self._journal.execute("PRAGMA busy_timeout=30000")
            journal_id = self._journal.execute("SELECT value FROM meta WHERE key='journal_id'").fetchone()
            if self._meta("journal_id") != (journal_id[0] if journal_id else None):
                self._reset(journal_id[0] if journal_id else "")
            new: list[Round] = []
            while True:
                through = int(self._meta("through_seq") or 0)
                rows = self._journal.execute(
                    "SELECT seq, kind, payload, created_at FROM events WHERE seq>? ORDER BY seq LIMIT ?",
                    (through, _BATCH)).fetchall()
                if not rows:
                    return new
                self._db.execute("BEGIN")
                try:
                    for seq, kind, payload, at in rows:
                        found = self._apply(seq, kind, json.loads(payload), at)
                        if found is not None:
                            new.append(found)
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('through_seq', ?)", (str(rows[-1][0]),))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _reset(self, journal_id: str) -> None:
        for table in ("meta", "rounds", "votes", "vote_log", "forgotten", "counts", "daily"):
            self._db.execute(f"DELETE FROM {table}")
        self._db.execute("INSERT INTO meta VALUES ('journal_id', ?)", (journal_id,))

    def _count(self, kind: str, at: float) -> None:
        self._db.execute("INSERT INTO counts VALUES (?, 1) ON CONFLICT(kind) DO UPDATE SET n=n+1", (kind,))
        self._db.execute("INSERT INTO daily VALUES (?, ?, 1) ON CONFLICT(day, kind) DO UPDATE SET n=n+1",
                         (_day(at), kind))

    def _apply(self, seq: int, kind: str, data: dict[str, Any], at: float) -> Round | None:
        db = self._db
        if kind == Round.kind:
            r = Round.from_dict(data)
            hidden = db.execute("SELECT 1 FROM forgotten WHERE user_id=?", (r.requester_id,)).fetchone() is not None
            db.execute(f"INSERT OR REPLACE INTO rounds({_COLUMNS}, hidden) VALUES ({', '.join('?' * 18)})",
                       (r.round_id, r.created_at, r.channel_id, r.guild_id, r.mode, r.source, r.prompt, r.requester_id,
                        r.parent_round_id, r.parent_candidate, r.instruction, r.adapter, len(r.image_paths), 0, 0, 0,
                        None, int(hidden)))
            self._count("rounds", r.created_at)
            return r
        if kind == RoundPosted.kind:
            posted = RoundPosted.from_dict(data)
            db.execute("UPDATE rounds SET message_id=? WHERE round_id=?", (posted.message_id, posted.round_id))
        elif kind == VoteEvent.kind:
            vote = VoteEvent.from_dict(data)
            key = (vote.round_id, vote.candidate, vote.user_id)
            if vote.action == "add":
                db.execute("INSERT OR IGNORE INTO votes VALUES (?, ?, ?)", key)
            else:
                db.execute("DELETE FROM votes WHERE round_id=? AND candidate=? AND user_id=?", key)
            db.execute("INSERT OR REPLACE INTO vote_log VALUES (?, ?, ?, ?, ?, ?)", (seq, *key, vote.action, at))
            self._recount(vote.round_id)
            if vote.action == "add":
                self._count("votes", at)
        elif kind == RefinementRequest.kind:
            self._count("refinements", at)
        elif kind == ModerationAction.kind:
            self._moderate(ModerationAction.from_dict(data))
        return None

    def _recount(self, round_id: str) -> None:
        self._db.execute("UPDATE rounds SET voters=(SELECT COUNT(DISTINCT user_id) FROM votes WHERE round_id=?) "
                         "WHERE round_id=?", (round_id, round_id))

    def _moderate(self, action: ModerationAction) -> None:
        db = self._db
        if action.action in ("flag", "unflag") and action.round_id:
            db.execute("UPDATE rounds SET flagged=? WHERE round_id=?", (int(action.action == "flag"), action.round_id))
        elif action.action == "remove" and action.round_id:
            db.execute("UPDATE rounds SET removed=1 WHERE round_id=?", (action.round_id,))  # final, as in exports
        elif action.action == "forget_me" and action.target_user_id is not None:
            user = action.target_user_id
            db.execute("INSERT OR IGNORE INTO forgotten VALUES (?)", (user,))
            db.execute("UPDATE rounds SET hidden=1 WHERE requester_id=?", (user,))
            voted = [row[0] for row in db.execute("SELECT DISTINCT round_id FROM votes WHERE user_id=?", (user,))]
            db.execute("DELETE FROM votes WHERE user_id=?", (user,))
            db.execute("DELETE FROM vote_log WHERE user_id=?", (user,))
            for round_id in voted:
                self._recount(round_id)

    # -- reading ----------------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def page(self, f: GalleryFilter) -> tuple[list[RoundRow], tuple[float, str] | None]:
        """One gallery page, newest first, and the cursor of the next (older) page if there is one.
        Keyset pagination: page 1,000 costs what page 1 does."""
        where, args = ["hidden=0"], []
        for clause, value in (("channel_id=?", f.channel_id), ("created_at>=?", f.since), ("created_at<?", f.until),
                              ("mode=?", f.mode), ("voters>=?", f.min_voters or None)):
            if value is not None:
                where.append(clause)
                args.append(value)
        if f.flagged is not None:
            where.append("flagged=?")
            args.append(int(f.flagged))
        if f.before is not None:
            where.append("(created_at, round_id) < (?, ?)")
            args.extend(f.before)
        rows = self._rows(f"SELECT {_COLUMNS} FROM rounds WHERE {' AND '.join(where)} "
                          "ORDER BY created_at DESC, round_id DESC LIMIT ?", [*args, f.limit + 1])
        found = self._with_votes(rows[: f.limit])
        more = len(rows) > f.limit
        return found, ((found[-1].created_at, found[-1].round_id) if more and found else None)

    def _with_votes(self, rows: list[tuple[Any, ...]]) -> list[RoundRow]:
        if not rows:
            return []
        ids = [row[0] for row in rows]
        tally: dict[tuple[str, int], int] = {
            (rid, k): n for rid, k, n in self._rows(
                f"SELECT round_id, candidate, COUNT(*) FROM votes WHERE round_id IN ({', '.join('?' * len(ids))}) "
                "GROUP BY round_id, candidate", ids)}
        out = []
        for row in rows:
            rid, candidates = row[0], row[12]
            out.append(RoundRow(*row[:13], bool(row[13]), bool(row[14]), *row[15:],
                                votes=tuple(tally.get((rid, k), 0) for k in range(1, candidates + 1)),
                                none_votes=tally.get((rid, 0), 0)))
        return out

    def round(self, round_id: str) -> RoundRow | None:
        found = self._with_votes(self._rows(f"SELECT {_COLUMNS} FROM rounds WHERE round_id=? AND hidden=0",
                                            (round_id,)))
        return found[0] if found else None

    def children(self, round_id: str) -> list[RoundRow]:
        return self._with_votes(self._rows(f"SELECT {_COLUMNS} FROM rounds WHERE parent_round_id=? AND hidden=0 "
                                           "ORDER BY created_at, round_id", (round_id,)))

    def vote_timeline(self, round_id: str, limit: int = 200) -> list[VoteLogEntry]:
        return [VoteLogEntry(*row) for row in self._rows(
            "SELECT seq, candidate, user_id, action, created_at FROM vote_log WHERE round_id=? ORDER BY seq LIMIT ?",
            (round_id, limit))]

    def channels(self) -> list[int]:
        return [int(row[0]) for row in self._rows("SELECT DISTINCT channel_id FROM rounds ORDER BY channel_id")]

    def counts(self) -> dict[str, int]:
        return {kind: int(n) for kind, n in self._rows("SELECT kind, n FROM counts")}

    def daily(self, first_day: str) -> dict[str, dict[str, int]]:
        """{kind: {YYYY-MM-DD: n}} for days from `first_day` on (rounds, votes added, refinements)."""
        out: dict[str, dict[str, int]] = {}
        for day, kind, n in self._rows("SELECT day, kind, n FROM daily WHERE day>=? ORDER BY day", (first_day,)):
            out.setdefault(kind, {})[day] = int(n)
        return out

    def top_prompts(self, since: float, limit: int = 10) -> list[tuple[str, int]]:
        return [(str(p), int(n)) for p, n in self._rows(
            "SELECT prompt, COUNT(*) AS n FROM rounds WHERE hidden=0 AND created_at>=? GROUP BY prompt "
            "ORDER BY n DESC, prompt LIMIT ?", (since, limit))]

    def most_voted(self, since: float, limit: int = 10) -> list[RoundRow]:
        return self._with_votes(self._rows(
            f"SELECT {_COLUMNS} FROM rounds WHERE hidden=0 AND created_at>=? AND voters>0 "
            "ORDER BY voters DESC, created_at DESC LIMIT ?", (since, limit)))

    def agreement(self, since: float) -> tuple[float | None, int]:
        """Over rounds with 2+ voters since `since`: the mean share of a round's voters who picked its most
        picked candidate (1.0 = everyone agreed), and how many rounds that is over."""
        rows = self._rows(
            "SELECT v.round_id, v.candidate, COUNT(*) FROM votes v JOIN rounds r USING(round_id) "
            "WHERE r.hidden=0 AND r.created_at>=? AND r.voters>=2 GROUP BY v.round_id, v.candidate", (since,))
        top: dict[str, int] = {}
        for rid, _, n in rows:
            top[rid] = max(top.get(rid, 0), int(n))
        if not top:
            return None, 0
        voters = dict(self._rows(f"SELECT round_id, voters FROM rounds WHERE round_id IN "
                                 f"({', '.join('?' * len(top))})", list(top)))
        shares = [min(1.0, n / voters[rid]) for rid, n in top.items() if voters.get(rid)]
        return (sum(shares) / len(shares) if shares else None), len(shares)


def utc_day(at: float | None = None) -> str:
    return _day(time.time() if at is None else at)
