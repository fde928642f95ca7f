"""A loopback Discord: the REST API and gateway an unmodified discord.py bot needs, on 127.0.0.1.

Used by the test-suite and by `refinery demo`. The server hosts one guild with the bot, an owner
and whatever users, roles and channels you add; a test plays the users (messages, reactions, slash
commands, button clicks) and observes what the bot did (requests, messages, reactions, responses).

    server = DiscordDevServer()
    await server.start()
    channel = server.add_channel("art")
    alice = server.add_user("alice")
    discord.http.Route.BASE = server.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)
    task = asyncio.create_task(bot.start(server.bot_token))
    await server.wait_until_identified()
    await server.send_message(channel, alice, "hello")
    reply = await server.wait_for_message(lambda m: m["author"]["id"] == str(server.bot_user_id))

What it reproduces, because bots get these wrong against the real thing: the exact
`application/json` content type; the bot's own messages and reactions echoed over the gateway
(ephemeral messages are not); intents (no MESSAGE_CONTENT → other people's guild messages arrive
blank unless they mention the bot); one callback per interaction (40060), follow-ups only after it,
the first follow-up after a "thinking" defer completing that message (and keeping its visibility);
message limits (2000 characters, 10 files, 10 MiB, 5 rows of 5 components, unique custom ids);
`allowed_mentions` (a bot message's `mentions` lists exactly the users it pings);
uploaded filenames sanitised (spaces → `_`); edits only of the bot's own messages; command
registration rules. It never rate-limits and does not buffer events while the bot is disconnected
(RESUME continues the sequence, replaying nothing).

Besides the guild's text channels it keeps the bot's DM channels (`dm_channel(user)`). Users can
also pick select-menu options (`select_options`) and submit modals the bot opened (`submit_modal`);
`disconnect_bot()` drops the gateway connection to exercise RESUME.

Modules: `_records` (users, roles, channels, constants), `_state` (the guild, messages, files),
`_messages` (the bot's message create/edit, events), `_commands` (command sync, invocation data),
`_interactions` (callbacks, interaction webhook), `_rest` (routes, recording), `_gateway`
(websocket sessions), `_http` (shared plumbing).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from types import TracebackType

import yarl
from aiohttp import web

from ._commands import CommandRegistry, OptionValue, Upload, command_data
from ._gateway import Gateway
from ._http import JSON, Changes, RecordedRequest
from ._interactions import (
    APPLICATION_COMMAND,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    Interaction,
    InteractionRoutes,
    component_data,
    find_component,
    modal_data,
)
from ._messages import MessageFeed
from ._records import DEFAULT_MEMBER_PERMISSIONS, MANAGE_GUILD
from ._rest import RestApi
from ._state import GuildWorld

__all__ = ["DEFAULT_MEMBER_PERMISSIONS", "MANAGE_GUILD", "DiscordDevServer", "Interaction", "RecordedRequest"]

log = logging.getLogger(__name__)

_MODAL = 9
_BUTTON, _STRING_SELECT, _LINK_STYLE = 2, 3, 5


class DiscordDevServer:
    """Discord's REST API and gateway for one guild, served on a local port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bot_token: str = "dev-token",
        bot_name: str = "Refinery",
        interaction_response_timeout: float | None = None,
        message_content_intent: bool = True,
    ) -> None:
        """`interaction_response_timeout`: answer callbacks later than this (s) with 10062 Unknown
        interaction, as Discord does after 3 s; None (default) never expires them.
        `message_content_intent`: the portal's switch; off, a bot asking for it is refused (4014)."""
        self.host = host
        self.bot_token = bot_token
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._world = world = GuildWorld(bot_name=bot_name)
        world.message_content_allowed = message_content_intent
        self._changes = Changes()
        self._gateway = Gateway(world, bot_token, self._changes, lambda: self.gateway_url)
        self._feed = MessageFeed(world, self._gateway, self._changes)
        self._commands = CommandRegistry(world)
        self._interactions = InteractionRoutes(world, self._feed, response_timeout=interaction_response_timeout)
        self._rest = RestApi(
            world,
            self._feed,
            self._commands,
            self._interactions,
            token=bot_token,
            gateway_url=lambda: self.gateway_url,
        )
        self.bot_user_id: int = world.bot.id
        self.application_id: int = world.application_id
        self.guild_id: int = world.id
        self.owner_id: int = world.owner.id  # guild and application owner, a member of the guild
        self.requests: list[RecordedRequest] = self._rest.requests
        self.unknown_routes: list[RecordedRequest] = self._rest.unknown_routes
        self.messages: dict[int, JSON] = world.messages

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind (port 0 picks a free port) and start serving."""
        if self._runner is not None:
            raise RuntimeError("DiscordDevServer.start() called twice")
        app = web.Application(middlewares=[self._rest.middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self._gateway.handle)
        app.add_routes(self._rest.routes())
        app.add_routes([self._rest.not_found_route()])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
        self._runner = runner
        self._port = sock.getsockname()[1]
        self._world.cdn_base = self.base_url
        log.info("Discord dev server on %s (guild %d, bot %d)", self.base_url, self.guild_id, self.bot_user_id)

    async def close(self) -> None:
        """Close bot connections (code 1001) and stop serving. Stop the bot first to avoid reconnects."""
        if self._runner is None:
            return
        await self._gateway.close()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> DiscordDevServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the dev server is not started yet: await start() first")
        return f"http://{self.host}:{self._port}"

    @property
    def api_base(self) -> str:
        """For `discord.http.Route.BASE`."""
        return self.base_url + "/api/v10"

    @property
    def gateway_url(self) -> str:
        """For `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY` (wrap it in `yarl.URL`)."""
        return self.base_url.replace("http://", "ws://", 1) + "/"

    async def wait_until_identified(self, timeout: float = 10) -> None:
        """Wait until a connected bot has been sent READY and GUILD_CREATE (or RESUMED)."""
        await self._changes.wait_for(
            lambda: True if self._gateway.identified else None, timeout, lambda: "no bot identified"
        )

    async def disconnect_bot(self, code: int = 4000) -> None:
        """Drop the bot's gateway connections; with a resumable code (4000) discord.py RESUMEs."""
        await self._gateway.disconnect(code)

    # -- the guild ---------------------------------------------------------------------------------
    def add_channel(self, name: str, *, nsfw: bool = False) -> int:
        """Create a text channel; a connected bot gets CHANNEL_CREATE."""
        channel = self._world.add_channel(name, nsfw=nsfw)
        self._gateway.dispatch("CHANNEL_CREATE", channel.payload())
        return channel.id

    def add_role(self, name: str, permissions: int = 0) -> int:
        """Create a role; a connected bot gets GUILD_ROLE_CREATE."""
        role = self._world.add_role(self._world.snowflake(), name, permissions)
        self._dispatch_role(role.id)
        return role.id

    def add_user(
        self,
        name: str,
        *,
        bot: bool = False,
        roles: list[int] | None = None,
        permissions: int = DEFAULT_MEMBER_PERMISSIONS,
    ) -> int:
        """Create a guild member with exactly `permissions` plus those of `roles`.

        @everyone grants nothing here; each distinct `permissions` value is a role of its own
        ("Members" for the default), so the bot's permission checks see what the test asked for.
        """
        known_roles = set(self._world.roles)
        user = self._world.add_user(name, bot=bot, roles=list(roles or []), permissions=permissions)
        for role_id in user.roles:
            if role_id not in known_roles:
                self._dispatch_role(role_id)
        self._gateway.dispatch(
            "GUILD_MEMBER_ADD", self._world.member_payload(user.id) | {"guild_id": str(self.guild_id)}
        )
        return user.id

    def remove_role(self, user_id: int, role_id: int) -> None:
        """Take a role from a member (a demotion); a connected bot gets GUILD_MEMBER_UPDATE."""
        self._require(user_id=user_id)
        user = self._world.users[user_id]
        if role_id not in user.roles:
            raise ValueError(f"user {user_id} does not have role {role_id}")
        user.roles.remove(role_id)
        payload = self._world.member_payload(user_id) | {"guild_id": str(self.guild_id)}
        self._gateway.dispatch("GUILD_MEMBER_UPDATE", payload)

    def dm_channel(self, user_id: int) -> int:
        """The bot's DM channel with a user (what `POST /users/@me/channels` opens), created if needed."""
        self._require(user_id=user_id)
        return self._world.open_dm(user_id).id

    def _dispatch_role(self, role_id: int) -> None:
        role = self._world.roles[role_id].payload()
        self._gateway.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(self.guild_id), "role": role})

    # -- what users do -------------------------------------------------------------------------
    async def send_message(
        self,
        channel_id: int,
        author_id: int,
        content: str,
        *,
        reply_to: int | None = None,
        attachments: list[tuple[str, bytes, str]] | None = None,
        mentions_bot: bool = False,
    ) -> JSON:
        """Post as a user (MESSAGE_CREATE). `mentions`: users `<@id>`-mentioned in `content`, the bot if
        `mentions_bot`, and the replied-to author (the Discord client pings it by default)."""
        self._require(channel_id=channel_id, user_id=author_id)
        if reply_to is not None and reply_to not in self._world.messages:
            raise ValueError(f"reply_to {reply_to} is not a message on this server")
        mentions = [self.bot_user_id] if mentions_bot else []
        if reply_to is not None:
            mentions.append(int(self._world.messages[reply_to]["author"]["id"]))
        files = [self._world.store_attachment(channel_id, *a) for a in attachments or []]
        message = self._world.new_message(
            channel_id=channel_id,
            author_id=author_id,
            content=content,
            attachments=files,
            reply_to=reply_to,
            mentions=mentions,
        )
        self._feed.created(message)
        await self._gateway.drain()
        return message

    async def add_reaction(self, channel_id: int, message_id: int, user_id: int, emoji: str) -> None:
        """React as a user (MESSAGE_REACTION_ADD); reacting twice with one emoji does nothing."""
        self._require(channel_id=channel_id, user_id=user_id, message_id=message_id)
        self._feed.reaction(message_id, user_id, emoji, added=True)
        await self._gateway.drain()

    async def delete_message(self, channel_id: int, message_id: int) -> None:
        """Delete a message as a moderator's client would (MESSAGE_DELETE); later edits get 404."""
        self._require(channel_id=channel_id, user_id=self.bot_user_id, message_id=message_id)
        self._feed.deleted(message_id)
        await self._gateway.drain()

    async def remove_reaction(self, channel_id: int, message_id: int, user_id: int, emoji: str) -> None:
        """Take a user's reaction back (MESSAGE_REACTION_REMOVE)."""
        self._require(channel_id=channel_id, user_id=user_id, message_id=message_id)
        self._feed.reaction(message_id, user_id, emoji, added=False)
        await self._gateway.drain()

    async def invoke_slash(
        self,
        name: str,
        options: dict[str, OptionValue],
        *,
        user_id: int,
        channel_id: int,
        attachments: dict[str, Upload] | None = None,
    ) -> Interaction:
        """Run a synced slash command (`"imagine"`, or `"group sub"` for subcommands).

        Option types come from the synced command; files for attachment options go in
        `attachments` ({option: (filename, data, content_type)}).
        """
        self._require(channel_id=channel_id, user_id=user_id)
        command_name, *path = name.split()
        command = self._commands.find(command_name)
        data = command_data(self._world, command, path, options, attachments or {}, channel_id)
        interaction = self._interactions.start(APPLICATION_COMMAND, data, user_id=user_id, channel_id=channel_id)
        await self._gateway.drain()
        return interaction

    async def click_button(self, message_id: int, custom_id: str, *, user_id: int) -> Interaction:
        """Click a button of a message (INTERACTION_CREATE, component type 2)."""
        message, component = self._component(message_id, custom_id)
        if component["type"] != _BUTTON or component.get("style") == _LINK_STYLE:
            raise ValueError(f"component {custom_id!r} of message {message_id} is not a clickable button")
        return await self._use_component(message, component, None, user_id)

    async def select_options(self, message_id: int, custom_id: str, values: list[str], *, user_id: int) -> Interaction:
        """Pick `values` in a string select menu (component type 3)."""
        message, component = self._component(message_id, custom_id)
        offered = [o["value"] for o in component.get("options") or []]
        if component["type"] != _STRING_SELECT or not set(values) <= set(offered):
            raise ValueError(f"select {custom_id!r} offers {offered}; cannot pick {values}")
        return await self._use_component(message, component, values, user_id)

    async def submit_modal(self, interaction: Interaction, values: dict[str, str]) -> Interaction:
        """Submit the modal the bot opened in answer to `interaction` ({text input custom_id: value})."""
        modals = [r for r in interaction.responses if r.get("type") == _MODAL]
        if not modals:
            raise ValueError(f"the bot opened no modal for interaction {interaction.id}")
        data = modal_data(modals[-1]["data"]["custom_id"], values)
        message = None if interaction.message_id is None else self._world.messages.get(interaction.message_id)
        submitted = self._interactions.start(
            MODAL_SUBMIT,
            data,
            user_id=interaction.user_id,
            channel_id=interaction.channel_id,
            message=message,
        )
        await self._gateway.drain()
        return submitted

    def _component(self, message_id: int, custom_id: str) -> tuple[JSON, JSON]:
        message = self._world.messages.get(message_id)
        if message is None:
            raise ValueError(f"message {message_id} is not on this server")
        component = find_component(message, custom_id)
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} of message {message_id} is disabled")
        return message, component

    async def _use_component(
        self, message: JSON, component: JSON, values: list[str] | None, user_id: int
    ) -> Interaction:
        interaction = self._interactions.start(
            MESSAGE_COMPONENT,
            component_data(component, values),
            user_id=user_id,
            channel_id=int(message["channel_id"]),
            message=message,
        )
        await self._gateway.drain()
        return interaction

    def _require(self, *, channel_id: int | None = None, user_id: int, message_id: int | None = None) -> None:
        known_channel = channel_id in self._world.channels or channel_id in self._world.dm_channels
        if channel_id is not None and not known_channel:
            raise ValueError(f"unknown channel id {channel_id}; create channels with add_channel()")
        if user_id not in self._world.users:
            raise ValueError(f"unknown user id {user_id}; create users with add_user()")
        if message_id is not None and message_id not in self._world.messages:
            raise ValueError(f"message {message_id} is not on this server")

    # -- observation -----------------------------------------------------------------------------
    @property
    def synced_commands(self) -> list[JSON]:
        """The body of the last `PUT /applications/{app}/commands` (global commands)."""
        return self._commands.last_global_body

    @property
    def interactions(self) -> list[Interaction]:
        """Every interaction started so far, oldest first."""
        return list(self._interactions.interactions.values())

    def channel_messages(self, channel_id: int) -> list[JSON]:
        """Current messages of a channel, in creation order."""
        order = self._world.channel_order.get(channel_id, [])
        return [self._world.messages[i] for i in order if i in self._world.messages]

    def reactions(self, message_id: int) -> dict[str, set[int]]:
        """emoji -> ids of the users (the bot included) whose reaction is on the message."""
        table = self._world.message_reactions.get(message_id, {})
        return {emoji: set(users) for emoji, users in table.items() if users}

    def attachment_bytes(self, url: str) -> bytes:
        """The bytes behind an attachment URL (also served over HTTP at that URL)."""
        path = yarl.URL(url).path
        if path not in self._world.files:
            raise KeyError(f"no attachment at {url}")
        return self._world.files[path][0]

    async def wait_for_message(self, predicate: Callable[[JSON], bool], timeout: float = 30) -> JSON:
        """The first message (existing or future, as created or edited) satisfying `predicate`."""

        def describe() -> str:
            recent = list(self._world.messages.values())[-5:]
            return "last messages: " + "; ".join(f"{m['author']['username']}: {m['content']!r}" for m in recent)

        return await self._changes.wait_for(
            lambda: next((m for m in list(self._world.messages.values()) if predicate(m)), None),
            timeout,
            describe,
        )

    async def wait_for_request(
        self, predicate: Callable[[RecordedRequest], bool], timeout: float = 30
    ) -> RecordedRequest:
        """The first recorded REST request (existing or future) satisfying `predicate`."""

        def describe() -> str:
            return "last requests: " + "; ".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-5:])

        return await self._changes.wait_for(
            lambda: next((r for r in list(self.requests) if predicate(r)), None), timeout, describe
        )
