"""Moderation and dataset exports for the service: who may, what is journaled, an export run.

Also the abuse guards: banned phrases (config plus `/banned add|remove`, journaled and replayed at
start-up, matched by `bot.wordfilter`), the NSFW policy (prompt list and image safety checker),
removing a round, and the moderation log. The per-user event rate limit is `bot.ratelimit`.

No discord and no oxen here. An export is built from the journal in a worker thread
(`storage.exports.build_dataset`, with its own connection to the same journal file), journaled as a
ModerationAction("export"), and committed as its own Oxen repository by a child process
(`storage.export_repo`), so the published export carries nothing of the raw log (only the Oxen
writer may open the log's own repository).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.config import Config, Secrets
from bot.errors import InvalidInput, NotAllowed, NotARound, Refused
from bot.permissions import Action, Member, allowed, is_moderator
from bot.wordfilter import WordFilter, normalise
from pipeline.requests import GenerationRequest
from storage import export_repo
from storage.async_journal import EventLog
from storage.exports import FORMATS, EmptyExportError, ExportFilters, ExportResult, build_dataset
from storage.journal import Journal
from storage.pseudonyms import ExportKeyMissingError, ExportKeyTooShortError, Pseudonymiser
from storage.records import ModerationAction, Round, new_id

log = logging.getLogger(__name__)

KEY_ENV = "REFINERY_EXPORT_KEY"
ATTACH_LIMIT_BYTES = 8_000_000  # a zipped export up to this size is attached to the answer
_WHAT = {Action.EXPORT: "export datasets", Action.FLAG: "flag rounds", Action.REMOVE: "remove rounds",
         Action.CANCEL_OTHERS: "cancel other people's jobs", Action.MANAGE_BANNED_WORDS: "manage banned words",
         Action.MANAGE_MODELS: "change the model or run the arena"}
MAX_PHRASE_LENGTH = 100
BOT_ID = 0  # moderator_id of actions the bot takes by itself (a refused prompt)
MAX_SNOWFLAKE = 2**63 - 1  # Discord ids are 64-bit; SQLite's INTEGER overflows past this


@dataclass(frozen=True)
class ExportPlan:
    """Validated /export (or `refinery export`) options."""

    name: str
    formats: tuple[str, ...]
    filters: ExportFilters


@dataclass(frozen=True)
class ExportSummary:
    name: str
    folder: Path
    counts: dict[str, int]
    rounds: int
    commit_id: str | None = None  # the commit of the export's own Oxen repository (the folder)
    error: str | None = None  # why it could not be committed
    archive: bytes | None = field(default=None, repr=False)  # the folder zipped, if under the limit
    left_out: dict[str, int] = field(default_factory=dict)  # rounds not used, by reason

    @property
    def oxen_state(self) -> str:
        return "committed" if self.commit_id and not self.error else "failed"


# -- parsing (shared by the cog and the CLI) ----------------------------------------------------------
def parse_formats(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """"ratings, pairs" → ("ratings", "pairs"); empty means all of them."""
    items = text.split(",") if isinstance(text, str) else list(text or ())
    wanted = tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    for item in wanted:
        if item not in FORMATS:
            raise InvalidInput(f"Unknown export format `{item}`: choose from {', '.join(FORMATS)}.")
    return wanted or FORMATS


def parse_day(text: str | None, option: str, *, end: bool = False) -> float | None:
    """YYYY-MM-DD (UTC) → a timestamp: its midnight, or with `end` the next midnight (the day counts)."""
    if text is None or not text.strip():
        return None
    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"{option}={text!r} is not a date: use YYYY-MM-DD, e.g. 2026-01-31.") from None
    try:
        return (day + timedelta(days=1) if end else day).timestamp()
    except OverflowError:  # until=9999-12-31: its next midnight is past what datetime can hold
        raise InvalidInput(f"{option}={text.strip()} is out of range: use a day before 9999-12-31.") from None


def default_export_name(now: float) -> str:
    return "export-" + datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")


def plan_export(*, formats: str | Sequence[str] | None, since: str | None, until: str | None,
                channel_id: int | None, min_votes: int | None, include_flagged: bool, name: str | None,
                now: float, include_edit_rounds: bool = False) -> ExportPlan:
    """Check every option, naming the bad value (raises InvalidInput)."""
    name = (name or "").strip() or default_export_name(now)
    if not export_repo.NAME.match(name):
        raise InvalidInput(f"Export name `{name[:80]}` is not allowed: use up to 64 letters, digits, `-` and `_`, "
                           "starting with a letter or digit.")
    if min_votes is not None and min_votes < 0:
        raise InvalidInput(f"min_votes={min_votes} is out of range: use 0 or more.")
    if channel_id is not None and not 0 < channel_id <= MAX_SNOWFLAKE:
        raise InvalidInput(f"channel={channel_id} is not a Discord channel id.")
    start, end = parse_day(since, "since"), parse_day(until, "until", end=True)
    if start is not None and end is not None and start >= end:
        raise InvalidInput(f"since={since} is after until={until}.")
    filters = ExportFilters(since=start, until=end, channel_id=channel_id, min_votes=min_votes or 0,
                            include_flagged=include_flagged, include_edit_rounds=include_edit_rounds)
    return ExportPlan(name, parse_formats(formats), filters)


def pseudonymiser(secret: str) -> Pseudonymiser:
    try:
        return Pseudonymiser.from_secret(secret)
    except ExportKeyTooShortError as short:
        raise InvalidInput(f"Dataset exports are not set up: {short} in the bot's environment.") from None
    except ExportKeyMissingError:
        raise InvalidInput(f"Dataset exports are not set up: the bot's operator must set {KEY_ENV} (a long random "
                           "secret that keys the user pseudonyms) in the bot's environment.") from None


def build(config: Config, plan: ExportPlan, out: Path, pseudo: Pseudonymiser, *,
          progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Blocking: replay the journal (own read connection, so the bot's journal thread is never held)."""
    journal = Journal(config.journal_path)
    try:
        # Mentions of forgotten or excluded users in other people's prompts and replies name nobody.
        pseudo = pseudo.forgetting(forgotten_users(journal) | plan.filters.excluded_users)
        return build_dataset(journal, config.data_dir, out, plan.formats, plan.filters, pseudo, name=plan.name,
                             progress=progress)
    except EmptyExportError as empty:  # an empty folder committed to Oxen would look like a finished export
        raise InvalidInput(f"Nothing to export: {empty}. Nothing was written, journaled or committed.") from None
    finally:
        journal.close()


def forgotten_users(journal: Journal) -> set[int]:
    """Users who ran /forget-me, read from the journal's moderation events (few, and indexed by kind)."""
    return {e.record.target_user_id for e in journal.events(kind="moderation")
            if isinstance(e.record, ModerationAction) and e.record.action == "forget_me" and e.record.target_user_id}


def zip_folder(folder: Path, limit: int = ATTACH_LIMIT_BYTES) -> bytes | None:
    """The folder as a zip, or None once it grows past `limit` (too big to attach)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".oxen" not in p.relative_to(folder).parts):
            archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
            if buffer.tell() > limit:
                return None
    return buffer.getvalue() if buffer.tell() <= limit else None


# -- the service's moderation desk --------------------------------------------------------------------
class Moderation:
    """Exports, flags and opt-outs. `export_key` overrides REFINERY_EXPORT_KEY (the demo and tests)."""

    def __init__(self, config: Config, journal: EventLog, *, export_key: str | None = None,
                 commit_timeout_s: float = 120.0, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.journal = journal
        self.wall_clock = wall_clock  # names exports that were given no name (export-<UTC time>)
        self.commit_timeout_s = commit_timeout_s
        self._export_key = export_key

        # Both replayed from the journal on first use (see _replay).
        self._words: WordFilter | None = None
        self._opted_out: set[int] | None = None
        self._nsfw = WordFilter(config.moderation.nsfw_words)
        self._warned_unchecked = False
        self._replay_lock = asyncio.Lock()

    def require(self, action: Action, member: Member) -> None:
        if not allowed(action, member, self.config):
            raise NotAllowed(f"Only moderators can {_WHAT[action]} (a role listed in moderation.moderator_roles, "
                             "or the Manage Server permission).")

    async def export(self, *, member: Member, formats: str | Sequence[str] | None, since: str | None,
                     until: str | None, channel_id: int | None, min_votes: int | None, include_flagged: bool,
                     name: str | None, include_edit_rounds: bool = False) -> ExportSummary:
        """Check, build, journal, commit the folder as its own Oxen repository (up to commit_timeout_s)."""
        self.require(Action.EXPORT, member)  # before anything is read or written
        plan = plan_export(formats=formats, since=since, until=until, channel_id=channel_id, min_votes=min_votes,
                           include_flagged=include_flagged, name=name, now=self.wall_clock(),
                           include_edit_rounds=include_edit_rounds)
        pseudo = pseudonymiser(self._export_key or Secrets.from_env().export_key)
        out = self.config.data_dir / "exports" / plan.name
        if out.exists():
            raise InvalidInput(f"An export named `{plan.name}` already exists; choose another name.")
        try:
            result = await asyncio.to_thread(build, self.config, plan, out, pseudo)
        except FileExistsError:  # another moderator took the name meanwhile
            raise InvalidInput(f"An export named `{plan.name}` already exists; choose another name.") from None
        meta = json.loads((out / "export.json").read_text())
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="export", moderator_id=member.user_id, round_id=None, target_user_id=None,
            reason=json.dumps({"name": plan.name, "formats": list(plan.formats), "counts": result.counts,
                               "filters": plan.filters.describe()}, separators=(",", ":"))))
        outcome = await asyncio.to_thread(export_repo.commit_export, out, plan.name,
                                          config_dir=self.config.data_dir / ".oxen-config",
                                          timeout_s=self.commit_timeout_s)
        log.info("export %s by user %s: %s, oxen %s", plan.name, member.user_id, result.counts, outcome)
        archive = await asyncio.to_thread(zip_folder, out)
        return ExportSummary(plan.name, out, result.counts, int(meta.get("rounds", 0)),
                             commit_id=outcome.get("commit_id"), error=outcome.get("error"), archive=archive,
                             left_out=dict(meta.get("left_out", {})))

    async def find_round(self, round_ref: str) -> Round:
        """A round by its id or by the id of a message showing it (raises NotARound)."""
        ref = round_ref.strip()
        found = await self.journal.round(ref)
        if found is None and ref.isdigit() and 0 < int(ref) <= MAX_SNOWFLAKE:  # SQLite holds 64-bit ids only
            found = await self.journal.round_for_message(int(ref))
        if found is None:
            raise NotARound(f"`{ref[:40]}` is not a round id (or round message id) in my log.")
        return found

    async def set_flag(self, member: Member, round_ref: str, *, flagged: bool, reason: str = "") -> Round:
        """Flag (or unflag) a round given by its id or its message's id; exports leave flagged rounds out."""
        self.require(Action.FLAG, member)
        found = await self.find_round(round_ref)
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="flag" if flagged else "unflag", moderator_id=member.user_id,
            round_id=found.round_id, target_user_id=found.requester_id, reason=reason))
        log.info("round %s %s by user %s", found.round_id, "flagged" if flagged else "unflagged", member.user_id)
        return found

    async def flag_by_reaction(self, member: Member, message_id: int, emoji: str) -> str | None:
        """The flag emoji by a moderator on a round's message flags it; anything else is ignored."""
        if emoji != self.config.moderation.flag_emoji or not allowed(Action.FLAG, member, self.config):
            return None
        found = await self.journal.round_for_message(message_id)
        if found is None:
            return None
        flagged = await self.set_flag(member, found.round_id, flagged=True, reason=f"{emoji} reaction")
        return flagged.round_id

    async def remove_by_reaction(self, member: Member, message_id: int, emoji: str) -> Round | None:
        """The remove emoji by a moderator on a round's message removes it; anything else is ignored."""
        if emoji != self.config.moderation.remove_emoji or not allowed(Action.REMOVE, member, self.config):
            return None
        if await self.journal.round_for_message(message_id) is None:
            return None
        found, _ = await self.remove(member, str(message_id), f"{emoji} reaction")
        return found

    async def forget_me(self, user_id: int) -> None:
        """Anyone may opt out: every later export leaves out their rounds and votes, and their votes
        are no longer logged at all (their prompts still are: moderation needs them)."""
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="forget_me", moderator_id=user_id, round_id=None, target_user_id=user_id,
            reason="/forget-me"))
        (await self.opted_out()).add(user_id)
        log.info("user %s opted out of exports", user_id)

    async def opted_out(self) -> set[int]:
        """Users who ran /forget-me (replayed from the journal once, kept up to date after)."""
        await self._replay()
        assert self._opted_out is not None
        return self._opted_out

    # -- NSFW policy --------------------------------------------------------------------------------
    async def nsfw_policy(self, request: GenerationRequest, user_id: int, nsfw_channel: bool) -> bool:
        """True when the round's images must be sent as spoilers; raises Refused (and journals a
        refusal) for an NSFW prompt outside an NSFW channel under `nsfw_action = "refuse"`."""
        if nsfw_channel or not self._nsfw.match(f"{request.prompt} {request.negative_prompt}"):
            return False
        if self.config.moderation.nsfw_action == "spoiler":
            return True
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="refuse", moderator_id=BOT_ID, round_id=None, target_user_id=user_id,
            reason="nsfw prompt outside an NSFW channel"))
        raise Refused("That prompt is only allowed in channels marked NSFW.")

    async def image_policy(self, record: Round, nsfw: tuple[bool, ...], nsfw_channel: bool) -> bool:
        """After generation: candidates flagged by the image safety checker flag the round (left out of
        exports unless asked for). Outside NSFW channels the images go as spoilers (True), or, under
        `nsfw_action = "refuse"`, the round is removed (kept for audit) and Refused is raised."""
        if not nsfw and self.config.moderation.safety_checker and not self._warned_unchecked:
            # With Redis the checker runs on the workers: one started without it sends no flags.
            self._warned_unchecked = True
            log.warning("moderation.safety_checker is set but round %s came back unchecked: give the "
                        "generating workers the same setting", record.round_id)
        flagged = [k for k, hit in enumerate(nsfw, 1) if hit]
        if not flagged:
            return False
        which = ", ".join(f"#{k}" for k in flagged)
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="flag", moderator_id=BOT_ID, round_id=record.round_id,
            target_user_id=record.requester_id, reason=f"safety checker flagged {which}"))
        if nsfw_channel:
            return False
        if self.config.moderation.nsfw_action == "spoiler":
            return True
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="remove", moderator_id=BOT_ID, round_id=record.round_id,
            target_user_id=record.requester_id, reason=f"safety checker flagged {which} outside an NSFW channel"))
        raise Refused("The safety checker flagged these images, so they are only shown in channels marked NSFW.")

    # -- banned phrases -------------------------------------------------------------------------------
    async def word_filter(self) -> WordFilter:
        """The config's phrases with every journaled /banned add and remove replayed, in order."""
        await self._replay()
        assert self._words is not None
        return self._words

    async def _replay(self) -> None:
        """One pass over the journaled moderation events builds both the banned phrases and the
        opt-outs; the lock makes the first prompts that arrive together share it."""
        async with self._replay_lock:
            if self._words is not None:
                return
            phrases = dict.fromkeys(self.config.moderation.banned_words)
            opted_out: set[int] = set()
            for event in await self.journal.events("moderation"):
                record = event.record
                if not isinstance(record, ModerationAction):
                    continue
                if record.action == "banned_add":
                    phrases[record.reason] = None
                elif record.action == "banned_remove":
                    phrases.pop(record.reason, None)
                elif record.action == "forget_me" and record.target_user_id is not None:
                    opted_out.add(record.target_user_id)
            self._opted_out = opted_out
            self._words = WordFilter(phrases)
            log.info("%d banned phrase(s) and %d opt-out(s) loaded", len(self._words.phrases), len(opted_out))

    async def screen(self, user_id: int, *texts: str) -> None:
        """Raise Refused (and journal a "refuse") if any text holds a banned phrase."""
        words = await self.word_filter()
        if not words or not any(words.match(text) for text in texts if text):
            return
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="refuse", moderator_id=BOT_ID, round_id=None, target_user_id=user_id,
            reason="banned phrase"))  # the phrase itself stays out of the log and the answer
        log.info("refused a prompt of user %s: banned phrase", user_id)
        raise Refused()

    async def change_banned(self, member: Member, phrase: str, *, add: bool) -> bool:
        """`/banned add|remove`: journal it so it survives restarts; False when it changes nothing."""
        self.require(Action.MANAGE_BANNED_WORDS, member)
        phrase = " ".join(phrase.split())
        if not normalise(phrase) or len(phrase) > MAX_PHRASE_LENGTH:
            raise InvalidInput(f"A banned phrase needs 1 to {MAX_PHRASE_LENGTH} characters with a letter or "
                               f"digit (got {len(phrase)}).")
        current = (await self.word_filter()).phrases
        if (phrase in current) == add:
            return False
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="banned_add" if add else "banned_remove", moderator_id=member.user_id,
            round_id=None, target_user_id=None, reason=phrase))
        kept = [*current, phrase] if add else [p for p in current if p != phrase]
        self._words = WordFilter(kept)
        log.info("user %s %s a banned phrase (%d now)", member.user_id, "added" if add else "removed", len(kept))
        return True

    async def banned_list(self, member: Member) -> tuple[str, ...]:
        self.require(Action.MANAGE_BANNED_WORDS, member)
        return (await self.word_filter()).phrases

    # -- removing rounds and the log -------------------------------------------------------------------
    async def remove(self, member: Member, round_ref: str, reason: str) -> tuple[Round, int | None]:
        """Journal a round's removal (exports leave it out for good); (the round, its message id)."""
        self.require(Action.REMOVE, member)
        found = await self.find_round(round_ref)
        await self.journal.append(ModerationAction(
            event_id=new_id(), action="remove", moderator_id=member.user_id, round_id=found.round_id,
            target_user_id=found.requester_id, reason=reason))
        log.info("round %s removed by user %s", found.round_id, member.user_id)
        return found, await self.journal.message_for_round(found.round_id)

    async def modlog(self, member: Member, limit: int = 20) -> list[ModerationAction]:
        """The last `limit` moderation events, newest first."""
        if not is_moderator(member, self.config):  # reading needs no Action of its own: any moderator
            raise NotAllowed("Only moderators can read the moderation log (a role listed in "
                             "moderation.moderator_roles, or the Manage Server permission).")
        events = await self.journal.recent("moderation", limit)
        return [e.record for e in events if isinstance(e.record, ModerationAction)]
