"""The dev server's REST API (`/api/v10/...`) and attachment downloads.

A middleware decodes every API body once, checks `Authorization: Bot <token>`, turns `ApiError` into
Discord's JSON errors and records the exchange. Routes that do not exist answer Discord's 404 and
are also recorded in `unknown_routes`, so a test notices a call the server does not understand.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from ._commands import CommandRegistry
from ._http import BODY, JSON, UNKNOWN_ROUTE, ApiError, RecordedRequest, json_response, no_content, read_body
from ._interactions import API, InteractionRoutes
from ._messages import MessageFeed, create_bot_message, edit_message
from ._state import GuildWorld

log = logging.getLogger(__name__)

MAX_REACTION_EMOJI = 20
_NO_AUTH = ("/interactions/", "/webhooks/", "/gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestApi:
    """Discord's REST routes over the shared world, recording every request."""

    def __init__(
        self,
        world: GuildWorld,
        feed: MessageFeed,
        commands: CommandRegistry,
        interactions: InteractionRoutes,
        *,
        token: str,
        gateway_url: Callable[[], str],
    ) -> None:
        self._world = world
        self._feed = feed
        self._commands = commands
        self._interactions = interactions
        self._token = token
        self._gateway_url = gateway_url
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []

    def routes(self) -> list[web.RouteDef]:
        channel, message = API + "/channels/{channel}", API + "/channels/{channel}/messages/{message}"
        app, guild = API + "/applications/{app}", API + "/guilds/{guild}"
        return [
            web.get(API + "/users/@me", self.get_me),
            web.post(API + "/users/@me/channels", self.open_dm),
            web.get(API + "/users/{user}", self.get_user),
            web.get(API + "/oauth2/applications/@me", self.get_application),
            web.get(API + "/applications/@me", self.get_application),
            web.get(API + "/gateway", self.get_gateway),
            web.get(API + "/gateway/bot", self.get_gateway),
            web.get(app + "/commands", self.get_commands),
            web.put(app + "/commands", self.put_commands),
            web.get(app + "/guilds/{guild}/commands", self.get_commands),
            web.put(app + "/guilds/{guild}/commands", self.put_commands),
            web.get(guild, self.get_guild),
            web.get(guild + "/roles", self.get_roles),
            web.get(guild + "/channels", self.get_channels),
            web.get(guild + "/members", self.get_members),
            web.get(guild + "/members/{user}", self.get_member),
            web.get(channel, self.get_channel),
            web.post(channel + "/typing", self.typing),
            web.get(channel + "/messages", self.get_history),
            web.post(channel + "/messages", self.post_message),
            web.get(message, self.get_message),
            web.patch(message, self.patch_message),
            web.delete(message, self.delete_message),
            web.put(message + "/reactions/{emoji}/@me", self.put_reaction),
            web.delete(message + "/reactions/{emoji}/@me", self.delete_reaction),
            web.get(message + "/reactions/{emoji}", self.get_reactions),
            web.delete(message + "/reactions/{emoji}/{user}", self.delete_reaction),
            web.delete(message + "/reactions/{emoji}", self.clear_reactions),
            web.delete(message + "/reactions", self.clear_reactions),
            *self._interactions.routes(),
            web.get("/attachments/{channel}/{attachment}/{filename}", self.get_file),
        ]

    def not_found_route(self) -> web.RouteDef:
        """Register last: answers everything no other route matched."""
        return web.route("*", "/{tail:.*}", self.not_found)

    # -- middleware ------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        is_api = request.path.startswith(API + "/")
        path = request.path.removeprefix(API) if is_api else request.path
        payload, files = None, []
        try:
            if is_api:
                payload, files = await read_body(request)
                request[BODY] = (payload, files)
                if not path.startswith(_NO_AUTH) and not self._authorized(request):
                    raise ApiError(401, 0, "401: Unauthorized")
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except (ValueError, KeyError, TypeError) as exc:  # a malformed request (or a dev server bug): be loud
            log.exception("dev server failed on %s %s", request.method, request.path)
            response = ApiError(400, 0, f"dev server could not handle this request: {exc!r}").response()
        record = RecordedRequest(
            request.method,
            path,
            dict(request.query),
            payload,
            [(f.filename, f.data, f.content_type) for f in files],
            response.status,
        )
        if is_api:
            self.requests.append(record)
        if request.get(UNKNOWN_ROUTE):
            self.unknown_routes.append(record)
        self._feed.changes.notify()
        return response

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bot ") and secrets.compare_digest(header.removeprefix("Bot "), self._token)

    async def not_found(self, request: web.Request) -> web.Response:
        request[UNKNOWN_ROUTE] = True
        log.warning("dev server has no route for %s %s: answering 404", request.method, request.path)
        return json_response({"message": "404: Not Found", "code": 0}, status=404)

    # -- lookups ---------------------------------------------------------------------------------
    def _channel(self, request: web.Request) -> int:
        raw = request.match_info["channel"]
        channel_id = int(raw) if raw.isdigit() else 0
        if channel_id not in self._world.channels and channel_id not in self._world.dm_channels:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel_id

    def _message(self, request: web.Request) -> JSON:
        channel_id = self._channel(request)
        raw = request.match_info["message"]
        message = self._world.messages.get(int(raw)) if raw.isdigit() else None
        if message is None or message["channel_id"] != str(channel_id):
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def _check_guild(self, request: web.Request) -> None:
        if request.match_info.get("guild", str(self._world.id)) != str(self._world.id):
            raise ApiError(404, 10004, "Unknown Guild")

    def _check_app(self, request: web.Request) -> None:
        if request.match_info["app"] != str(self._world.application_id):
            raise ApiError(404, 10002, "Unknown Application")

    # -- users, application, gateway ---------------------------------------------------------------
    async def get_me(self, request: web.Request) -> web.Response:
        bot = self._world.bot.payload()
        return json_response(
            bot | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None, "locale": "en-US"}
        )

    async def open_dm(self, request: web.Request) -> web.Response:
        body, _ = request[BODY]
        raw = str((body or {}).get("recipient_id", ""))
        if not raw.isdigit() or int(raw) not in self._world.users:
            raise ApiError(400, 50033, "Invalid Recipient(s)")
        return json_response(self._world.channel_payload(self._world.open_dm(int(raw)).id))

    async def get_user(self, request: web.Request) -> web.Response:
        raw = request.match_info["user"]
        user = self._world.users.get(int(raw)) if raw.isdigit() else None
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(user.payload())

    async def get_application(self, request: web.Request) -> web.Response:
        world = self._world
        return json_response(
            {
                "id": str(world.application_id),
                "name": world.bot.name,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": world.owner.payload(),
                "team": None,
                "flags": world.application_flags,
                "hook": True,
                "rpc_origins": [],
                "redirect_uris": [],
                "tags": [],
                "bot": world.bot.payload(),
                "approximate_guild_count": 1,
                "interactions_endpoint_url": None,
                "terms_of_service_url": None,
                "privacy_policy_url": None,
            }
        )

    async def get_gateway(self, request: web.Request) -> web.Response:
        body: JSON = {"url": self._gateway_url().rstrip("/")}
        if request.path.endswith("/bot"):
            limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
            body |= {"shards": 1, "session_start_limit": limit}
        return json_response(body)

    # -- application commands --------------------------------------------------------------------
    async def get_commands(self, request: web.Request) -> web.Response:
        self._check_app(request)
        self._check_guild(request)
        guild = "guild" in request.match_info
        return json_response(self._commands.guild_commands if guild else self._commands.global_commands)

    async def put_commands(self, request: web.Request) -> web.Response:
        self._check_app(request)
        self._check_guild(request)
        body, _ = request[BODY]
        return json_response(self._commands.replace(body, guild="guild" in request.match_info))

    # -- guild -------------------------------------------------------------------------------------
    async def get_guild(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        return json_response(self._world.guild_payload(full=False))

    async def get_roles(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        return json_response([r.payload() for r in self._world.roles.values()])

    async def get_channels(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        return json_response([c.payload() for c in self._world.channels.values()])

    async def get_members(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        after = int(request.query.get("after", 0))
        limit = min(int(request.query.get("limit", 1)), 1000)
        users = sorted(u for u in self._world.users if u > after)[:limit]
        return json_response([self._world.member_payload(u) for u in users])

    async def get_member(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        raw = request.match_info["user"]
        if not raw.isdigit() or int(raw) not in self._world.users:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(self._world.member_payload(int(raw)))

    # -- channels and messages -------------------------------------------------------------------
    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._world.channel_payload(self._channel(request)))

    async def typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return no_content()

    async def get_history(self, request: web.Request) -> web.Response:
        channel_id = self._channel(request)
        limit = max(1, min(int(request.query.get("limit", 50)), 100))
        ids = [i for i in self._world.channel_order.get(channel_id, []) if i in self._world.messages]
        if "before" in request.query:
            ids = [i for i in ids if i < int(request.query["before"])][-limit:]
        elif "after" in request.query:
            ids = [i for i in ids if i > int(request.query["after"])][:limit]
        elif "around" in request.query:
            around = int(request.query["around"])
            older = [i for i in ids if i <= around][-((limit + 1) // 2) :]
            ids = older + [i for i in ids if i > around][: limit - len(older)]
        else:
            ids = ids[-limit:]
        return json_response([self._world.messages[i] for i in reversed(ids)])  # newest first

    async def post_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel(request)
        payload, files = request[BODY]
        message = create_bot_message(self._world, channel_id, payload or {}, files)
        self._feed.created(message)
        return json_response(message)

    async def get_message(self, request: web.Request) -> web.Response:
        return json_response(self._message(request))

    async def patch_message(self, request: web.Request) -> web.Response:
        message = self._message(request)
        if message["author"]["id"] != str(self._world.bot.id):
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        payload, files = request[BODY]
        message = edit_message(self._world, message, payload or {}, files)
        self._feed.updated(message)
        return json_response(message)

    async def delete_message(self, request: web.Request) -> web.Response:
        self._feed.deleted(int(self._message(request)["id"]))
        return no_content()

    # -- reactions ---------------------------------------------------------------------------------
    async def put_reaction(self, request: web.Request) -> web.Response:
        message_id, emoji = int(self._message(request)["id"]), request.match_info["emoji"]
        table = self._world.message_reactions.get(message_id, {})
        if emoji not in table and len([e for e, users in table.items() if users]) >= MAX_REACTION_EMOJI:
            raise ApiError(400, 30010, "Maximum number of reactions reached (20)")
        self._feed.reaction(message_id, self._world.bot.id, emoji, added=True)
        return no_content()

    async def delete_reaction(self, request: web.Request) -> web.Response:
        message_id, emoji = int(self._message(request)["id"]), request.match_info["emoji"]
        raw_user = request.match_info.get("user", "@me")
        user_id = self._world.bot.id if raw_user == "@me" else int(raw_user) if raw_user.isdigit() else -1
        if user_id not in self._world.users:
            raise ApiError(404, 10013, "Unknown User")
        self._feed.reaction(message_id, user_id, emoji, added=False)
        return no_content()

    async def get_reactions(self, request: web.Request) -> web.Response:
        """Who reacted with one emoji, as Discord pages it: ordered by user id, `limit` 1-100 (default
        25) users with ids above `after`; `type=1` (super reactions, never made here) lists nobody."""
        message_id, emoji = int(self._message(request)["id"]), request.match_info["emoji"]
        raw_limit, raw_after = request.query.get("limit", "25"), request.query.get("after", "0")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100 or not raw_after.isdigit():
            raise ApiError(400, 50035, "Invalid Form Body")
        if request.query.get("type", "0") != "0":
            return json_response([])
        users = sorted(u for u in self._world.message_reactions.get(message_id, {}).get(emoji, set())
                       if u > int(raw_after))
        return json_response([self._world.users[u].payload() for u in users[: int(raw_limit)]])

    async def clear_reactions(self, request: web.Request) -> web.Response:
        message_id = int(self._message(request)["id"])
        self._feed.reactions_cleared(message_id, request.match_info.get("emoji"))
        return no_content()

    # -- CDN -------------------------------------------------------------------------------------
    async def get_file(self, request: web.Request) -> web.Response:
        stored = self._world.files.get(request.path)
        if stored is None:
            return json_response({"message": "404: Not Found", "code": 0}, status=404)
        data, content_type = stored
        return web.Response(body=data, headers={"Content-Type": content_type})
