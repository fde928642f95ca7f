"""The dev server's gateway: the websocket a bot connects to, and event dispatch to connected bots.

One `GatewaySession` per IDENTIFY; a RESUME re-attaches a new connection to an existing session and
continues its sequence numbers (no events are replayed: the server does not buffer while a bot is away).
Every frame goes through a per-connection queue drained by one writer task, so dispatch is synchronous
(callable from plain methods) and frames leave in exactly the order they were dispatched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ._http import JSON, Changes
from ._state import GuildWorld

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41_250

# Gateway opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE, RESUME = 0, 1, 2, 3, 4, 6
REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 8, 9, 10, 11

# Gateway intents, and which events each one gates.
GUILDS, GUILD_MEMBERS, GUILD_MESSAGES, GUILD_MESSAGE_REACTIONS = 1, 1 << 1, 1 << 9, 1 << 10
DIRECT_MESSAGES, DIRECT_MESSAGE_REACTIONS, MESSAGE_CONTENT = 1 << 12, 1 << 13, 1 << 15
_EVENT_INTENTS = {
    "GUILD_CREATE": GUILDS,
    "GUILD_ROLE_CREATE": GUILDS,
    "CHANNEL_CREATE": GUILDS,
    "GUILD_MEMBER_ADD": GUILD_MEMBERS,
    "MESSAGE_CREATE": GUILD_MESSAGES,
    "MESSAGE_UPDATE": GUILD_MESSAGES,
    "MESSAGE_DELETE": GUILD_MESSAGES,
    "MESSAGE_REACTION_ADD": GUILD_MESSAGE_REACTIONS,
    "MESSAGE_REACTION_REMOVE": GUILD_MESSAGE_REACTIONS,
    "MESSAGE_REACTION_REMOVE_ALL": GUILD_MESSAGE_REACTIONS,
    "MESSAGE_REACTION_REMOVE_EMOJI": GUILD_MESSAGE_REACTIONS,
}

# Close codes.
DECODE_ERROR, UNKNOWN_OPCODE, NOT_AUTHENTICATED, AUTHENTICATION_FAILED, ALREADY_AUTHENTICATED = (
    4002,
    4001,
    4003,
    4004,
    4005,
)
DISALLOWED_INTENTS = 4014  # a privileged intent the application has not switched on in the portal

_Frame = str | Callable[[], None]  # a JSON text, or a marker run when the writer reaches it


class _Connection:
    """One websocket and its ordered outbound queue (compressed per connection when asked)."""

    def __init__(self, ws: web.WebSocketResponse, *, zlib_stream: bool) -> None:
        self.ws = ws
        self.session: GatewaySession | None = None
        self._compressor = zlib.compressobj() if zlib_stream else None
        self._queue: asyncio.Queue[_Frame] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name="devserver-gateway-writer")

    def send(self, frame: _Frame) -> None:
        self._queue.put_nowait(frame)

    def send_op(self, op: int, data: Any) -> None:
        self.send(json.dumps({"op": op, "d": data, "s": None, "t": None}))

    async def _write(self) -> None:
        while True:
            frame = await self._queue.get()
            if callable(frame):
                frame()
                continue
            if self.ws.closed:
                continue
            try:
                if self._compressor is None:
                    await self.ws.send_str(frame)
                else:
                    compressed = self._compressor.compress(frame.encode()) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(compressed)
            except (ConnectionError, RuntimeError) as exc:  # the bot went away mid-send
                log.debug("gateway send failed: %s", exc)

    @property
    def writer_stopped(self) -> bool:
        return self._writer.done()

    async def drain(self) -> None:
        """Wait until everything queued so far has been written."""
        done = asyncio.get_running_loop().create_future()
        self.send(lambda: done.done() or done.set_result(None))
        await done

    async def stop(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


@dataclass
class GatewaySession:
    """What survives a reconnect: the session id, its sequence and the bot's intents."""

    id: str
    intents: int
    seq: int = 0
    ready: bool = False  # READY and GUILD_CREATE written
    connection: _Connection | None = field(default=None, repr=False)

    def dispatch(self, event: str, data: JSON) -> None:
        if self.connection is None:
            return
        self.seq += 1
        self.connection.send(json.dumps({"op": DISPATCH, "t": event, "s": self.seq, "d": data}))


class Gateway:
    """Accepts bot connections and fans events out to every identified session."""

    def __init__(self, world: GuildWorld, token: str, changes: Changes, url: Callable[[], str]) -> None:
        self._world = world
        self._token = token
        self._changes = changes
        self._url = url
        self.sessions: dict[str, GatewaySession] = {}
        self._connections: set[_Connection] = set()

    @property
    def identified(self) -> bool:
        """Whether a bot is connected and has been sent READY and GUILD_CREATE."""
        return any(s.ready and s.connection is not None for s in self.sessions.values())

    def dispatch(self, event: str, data: JSON) -> None:
        """Send one event to every connected session whose intents cover it."""
        intent = _EVENT_INTENTS.get(event)
        if intent is not None and event.startswith("MESSAGE_") and "guild_id" not in data:  # a DM
            intent = DIRECT_MESSAGE_REACTIONS if intent == GUILD_MESSAGE_REACTIONS else DIRECT_MESSAGES
        for session in self.sessions.values():
            if intent is not None and not session.intents & intent:
                continue
            payload = data
            if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
                payload = self._visible_message(session, data)
            session.dispatch(event, payload)

    def _visible_message(self, session: GatewaySession, message: JSON) -> JSON:
        """Without MESSAGE_CONTENT, Discord blanks other people's guild messages unless they mention the bot."""
        bot_id = str(self._world.bot.id)
        if session.intents & MESSAGE_CONTENT or "guild_id" not in message or message["author"]["id"] == bot_id:
            return message
        if any(u["id"] == bot_id for u in message.get("mentions", [])):
            return message
        return message | {"content": "", "embeds": [], "attachments": [], "components": []}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The websocket endpoint (`ws://host:port/?v=10&encoding=json[&compress=zlib-stream]`)."""
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        if not ws.can_prepare(request).ok:
            raise web.HTTPNotFound(text="this is the gateway: connect with a websocket")
        await ws.prepare(request)
        compress = request.query.get("compress")
        conn = _Connection(ws, zlib_stream=compress == "zlib-stream")
        log.debug("gateway connection opened (compress=%s)", compress)
        self._connections.add(conn)
        conn.send_op(HELLO, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["devserver"]})
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    payload = json.loads(msg.data)
                except ValueError:
                    await self._close(conn, DECODE_ERROR, "Error while decoding payload.")
                    break
                await self._on_op(conn, payload.get("op"), payload.get("d"))
        finally:
            self._connections.discard(conn)
            if conn.session is not None and conn.session.connection is conn:
                conn.session.connection = None
            await conn.stop()
            self._changes.notify()
            log.debug("gateway connection closed (code %s)", ws.close_code)
        return ws

    async def _on_op(self, conn: _Connection, op: Any, data: Any) -> None:
        if op == HEARTBEAT:
            conn.send_op(HEARTBEAT_ACK, None)
        elif op == IDENTIFY:
            await self._identify(conn, data or {})
        elif op == RESUME:
            await self._resume(conn, data or {})
        elif conn.session is None:
            await self._close(conn, NOT_AUTHENTICATED, "Not authenticated.")
        elif op == REQUEST_MEMBERS:
            self._send_members(conn.session, data or {})
        elif op in (PRESENCE, VOICE_STATE):
            pass  # accepted and ignored
        else:
            await self._close(conn, UNKNOWN_OPCODE, f"Unknown opcode {op}.")

    def _token_ok(self, token: Any) -> bool:
        return isinstance(token, str) and secrets.compare_digest(token.removeprefix("Bot "), self._token)

    async def _identify(self, conn: _Connection, data: JSON) -> None:
        if conn.session is not None:
            await self._close(conn, ALREADY_AUTHENTICATED, "Already authenticated.")
            return
        if not self._token_ok(data.get("token")):
            await self._close(conn, AUTHENTICATION_FAILED, "Authentication failed.")
            return
        if int(data.get("intents") or 0) & MESSAGE_CONTENT and not self._world.message_content_allowed:
            await self._close(conn, DISALLOWED_INTENTS, "Disallowed intent(s).")
            return
        session = GatewaySession(secrets.token_hex(16), int(data.get("intents") or 0), connection=conn)
        self.sessions[session.id] = session
        conn.session = session
        world = self._world
        session.dispatch(
            "READY",
            {
                "v": 10,
                "user": world.bot.payload() | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None},
                "guilds": [{"id": str(world.id), "unavailable": True}],
                "session_id": session.id,
                "session_type": "normal",
                "resume_gateway_url": self._url(),
                "application": {"id": str(world.application_id), "flags": world.application_flags},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "user_settings": {},
                "_trace": ["devserver"],
            },
        )
        if session.intents & GUILDS:
            session.dispatch("GUILD_CREATE", world.guild_payload(full=True))
        conn.send(lambda: self._mark_ready(session))
        log.info("bot identified (session %s, intents %d)", session.id, session.intents)

    def _mark_ready(self, session: GatewaySession) -> None:
        session.ready = True
        self._changes.notify()

    async def _resume(self, conn: _Connection, data: JSON) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or not self._token_ok(data.get("token")):
            conn.send_op(INVALID_SESSION, False)
            return
        if session.connection is not None and session.connection is not conn:
            await session.connection.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"Session resumed elsewhere.")
        session.connection = conn
        conn.session = session
        session.dispatch("RESUMED", {"_trace": ["devserver"]})
        conn.send(lambda: self._mark_ready(session))
        log.info("bot resumed session %s at seq %d", session.id, session.seq)

    def _send_members(self, session: GatewaySession, data: JSON) -> None:
        """Answer op 8 with one GUILD_MEMBERS_CHUNK (filtered by `user_ids` or `query`, capped by `limit`)."""
        users = list(self._world.users.values())
        not_found: list[str] = []
        if data.get("user_ids") is not None:
            raw_ids = data["user_ids"] if isinstance(data["user_ids"], list) else [data["user_ids"]]
            wanted = [int(u) for u in raw_ids]
            not_found = [str(u) for u in wanted if u not in self._world.users]
            users = [u for u in users if u.id in wanted]
        elif data.get("query"):
            users = [u for u in users if u.name.lower().startswith(str(data["query"]).lower())]
        if data.get("limit"):
            users = users[: int(data["limit"])]
        chunk: JSON = {
            "guild_id": str(self._world.id),
            "members": [self._world.member_payload(u.id) for u in users],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": not_found,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        if data.get("presences"):
            chunk["presences"] = []
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    async def _close(self, conn: _Connection, code: int, reason: str) -> None:
        log.warning("closing gateway connection: %d %s", code, reason)
        await conn.drain()
        await conn.ws.close(code=code, message=reason.encode())

    async def drain(self) -> None:
        """Wait until every event dispatched so far has been written to the sockets."""
        for conn in list(self._connections):
            await conn.drain()

    async def disconnect(self, code: int) -> None:
        """Close every bot connection with `code` (sessions stay resumable)."""
        for conn in list(self._connections):
            if conn.ws.closed or conn.writer_stopped:
                continue  # a bot that died (SIGKILL) leaves a dead connection: nothing to drain
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.drain(), timeout=2)
            await conn.ws.close(code=code, message=b"closed by the dev server")

    async def close(self) -> None:
        await self.disconnect(WSCloseCode.GOING_AWAY)
        self.sessions.clear()
