"""`Dashboard`: the moderators' web server inside the bot process, and what its pages share.

Built once by `bot.app.running_app` (when `[dashboard] enabled`) and stopped before the bot. The Discord
side (member look-ups for the permission check, deleting a removed round's message, gateway latency)
is plugged in by `cogs/dashboard.py` as a `DiscordSide`, so nothing here imports discord.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import jinja2
from aiohttp import web

from bot.config import Config
from bot.errors import NotAllowed
from bot.permissions import Member, is_moderator
from bot.service import RefineryService
from pipeline.jobs import JobState
from storage.pseudonyms import Pseudonymiser
from storage.records import Round
from storage.round_index import RoundIndex
from storage.writer_process import WriterProcess
from storage.writer_settings import STATUS_FILE, lag_threshold_s

from ._auth import Identity, LoginLedger, SessionLedger, Signer, login_token
from ._limits import server_options
from ._metrics import Metrics, Snapshot

log = logging.getLogger(__name__)
T = TypeVar("T")


class DiscordSide(Protocol):
    """What the dashboard asks of Discord (implemented by cogs/dashboard.py)."""

    async def member(self, guild_id: int, user_id: int) -> Member | None:
        """The user as a member of the guild now (roles, permissions), or None if they left it."""

    async def take_down(self, found: Round, message_id: int | None) -> None:
        """Delete a removed round's message and tell its requester, as the /remove command does."""

    def connected(self) -> bool: ...

    def latency_s(self) -> float | None: ...


@dataclass(frozen=True)
class _Cached:
    member: Member | None
    at: float


class Dashboard:
    def __init__(self, config: Config, service: RefineryService, *, key: str = "",
                 writer: WriterProcess | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config, self.service, self.writer, self.clock = config, service, writer, clock
        self.settings = config.dashboard
        self.signer = Signer.from_secret(key)
        self.pseudonyms = Pseudonymiser(self.signer.derive("pseudonyms"))
        self.index = RoundIndex(config.data_dir / "dashboard.sqlite3", config.journal_path)
        self.ledger = LoginLedger(config.data_dir / "dashboard-logins.sqlite3")
        self.sessions = SessionLedger(config.data_dir / "dashboard-logins.sqlite3")
        self.metrics = Metrics()
        self.templates = jinja2.Environment(loader=jinja2.PackageLoader("bot.dashboard", "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.discord: DiscordSide | None = None  # plugged in by cogs/dashboard.py once the bot has loaded it
        self.started_at = clock()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._members: dict[tuple[int, int], _Cached] = {}
        self._catch_up_lock = asyncio.Lock()
        self._warm: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind `[dashboard] listen`. A port in use is logged, not fatal: the bot matters more."""
        from ._web import build_app  # the routes import this module

        runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=2.0, **server_options(self.settings))
        await runner.setup()
        host, port = self.settings.host_port
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as error:
            await runner.cleanup()
            log.error("dashboard: cannot listen on %s (%s); running without it", self.settings.listen, error)
            return
        await web.SockSite(runner, sock, shutdown_timeout=2.0).start()
        self._runner, self.port = runner, sock.getsockname()[1]
        # Index what the journal already holds now, not on the first page view (100,000 rounds: seconds).
        self._warm = asyncio.create_task(self.catch_up(), name="refinery-dashboard-index")
        self._warm.add_done_callback(_log_failure)
        log.info("dashboard on %s (log in with /dashboard)", self.base_url)

    async def stop(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
            await asyncio.gather(self._warm, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        async with self._catch_up_lock:
            await asyncio.to_thread(self.index.close)
        self.ledger.close()
        self.sessions.close()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def base_url(self) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host, _ = self.settings.host_port
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port or self.settings.host_port[1]}"

    @property
    def secure_cookies(self) -> bool:
        return self.settings.public_url.startswith("https://")

    # -- logins and permission ----------------------------------------------------------------------
    def login_link(self, member: Member, guild_id: int) -> str:
        """A one-time link for a moderator (NotAllowed for anyone else). Never log it: it is a login."""
        if not self.running:
            raise NotAllowed("The dashboard is not running (see the bot's log).")
        require_moderator(member, self.config)
        return f"{self.base_url}/login?t={login_token(self.signer, member.user_id, guild_id, self.clock())}"

    async def member(self, identity: Identity) -> Member | None:
        """The signed-in user as Discord sees them now, read again after `permission_cache_s`."""
        key, now = (identity.guild_id, identity.user_id), self.clock()
        cached = self._members.get(key)
        if cached is not None and now - cached.at < self.settings.permission_cache_s:
            return cached.member
        if self.discord is None:
            return None
        found = await self.discord.member(identity.guild_id, identity.user_id)
        self._members[key] = _Cached(found, now)
        return found

    def pseudonym(self, user_id: int) -> str:
        return "the bot" if user_id == 0 else self.pseudonyms.user(user_id)

    # -- the read model -----------------------------------------------------------------------------
    async def catch_up(self) -> None:
        async with self._catch_up_lock:
            new = await asyncio.to_thread(self.index.catch_up)
        self.metrics.observe(new, self.started_at)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Bring the read model up to the journal, then query it, off the event loop."""
        await self.catch_up()
        return await self.query(fn, *args)

    async def query(self, fn: Callable[..., T], *args: Any) -> T:
        """Query the read model as it is (a page's further queries, after one `read`)."""
        return await asyncio.to_thread(fn, *args)

    # -- health -------------------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        counts = await self.read(self.index.counts)
        listing = await self.service.queue_view()
        writer, pending, lag, commit_s = self.writer, 0, 0.0, None
        if writer is not None:
            pending, age = await asyncio.to_thread(writer.pending)
            lag = age or 0.0
            commit_s = (self.writer_status().get("last_commit") or {}).get("seconds")
        side = self.discord
        return Snapshot(
            counts=counts, queue_depth=len(listing),
            queue_running=sum(1 for job in listing if job.status.state is JobState.RUNNING),
            writer_managed=writer is not None, writer_running=writer is not None and writer.running,
            writer_pending=pending, writer_lag_s=lag,
            writer_lag_limit_s=lag_threshold_s(self.config.storage.commit_interval_s), commit_s=commit_s,
            dropped_events=self.service.dropped_events,
            discord_connected=side is not None and side.connected(),
            discord_latency_s=side.latency_s() if side is not None else None)

    def writer_status(self) -> dict[str, Any]:
        """The Oxen writer's own status file (written by its process), or {} before it wrote one."""
        try:
            found = json.loads((self.config.data_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}


def require_moderator(member: Member, config: Config) -> None:
    """The dashboard is for moderators, as /modlog is (bot.permissions: a listed role or Manage Server)."""
    if not is_moderator(member, config):
        raise NotAllowed("Only moderators can open the dashboard (a role listed in moderation.moderator_roles, "
                         "or the Manage Server permission).")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("dashboard: indexing the journal failed", exc_info=task.exception())
