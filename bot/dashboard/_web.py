"""The aiohttp application: the guard every request passes, the login, health, metrics and image routes.

The guard: pages need a signed session cookie whose user is a moderator *now* (looked up again after
`permission_cache_s`); without one a GET goes to the "log in from Discord" page and anything else is
refused. Every POST but the login carries the session's CSRF token. Pages are never cached and never
framed; the login token never leaves in a Referer.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections import OrderedDict
from importlib import resources
from typing import Any

from aiohttp import web
from PIL import Image

from bot.permissions import Member, is_moderator

from ._auth import COOKIE, Identity, LoginRefused, csrf_ok, csrf_token, read_login, read_session, session_cookie
from ._limits import MAX_BODY_BYTES, body_limits
from ._server import Dashboard

log = logging.getLogger(__name__)
DASHBOARD = web.AppKey("dashboard", Dashboard)
IDENTITY = web.RequestKey("identity", Identity)
MEMBER = web.RequestKey("member", Member)
PUBLIC = frozenset({"/healthz", "/metrics", "/welcome", "/login", "/static/dashboard.css"})
ROUND_ID = re.compile(r"[0-9a-f]{12}")
IMAGE_NAME = re.compile(r"(\d{1,2}|mask)\.png")
THUMB_PX = 192
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # No script at all: the pages work without JavaScript, and an injected <script> would not run.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


def dashboard_of(request: web.Request) -> Dashboard:
    return request.app[DASHBOARD]


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    dash = dashboard_of(request)
    identity: Identity | None = request.get(IDENTITY)
    text = dash.templates.get_template(template).render(
        csrf=csrf_token(dash.signer, identity) if identity else "", signed_in=identity is not None,
        path=request.path, pseudonym=dash.pseudonym, **context)
    return web.Response(text=text, status=status, content_type="text/html")


def refuse(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return render(request, "message.html", status=status, title=title, message=message)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and downloads included, just before its headers are sent."""
    response.headers.update(_HEADERS)


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in PUBLIC:
        return await handler(request)
    dash = dashboard_of(request)
    identity = read_session(dash.signer, request.cookies.get(COOKIE, ""), dash.clock())
    if identity is not None and not dash.sessions.live(identity):
        identity = None  # logged out (here or everywhere): its signature alone opens nothing
    if identity is None:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther("/welcome")
        return refuse(request, 403, "Not signed in", "Log in with /dashboard in Discord first.")
    member = await dash.member(identity)
    if member is None or not is_moderator(member, dash.config):
        response = refuse(request, 403, "Not a moderator",
                          "You are not a moderator of this server (any more): the dashboard is closed to you.")
        response.del_cookie(COOKIE)
        return response
    request[IDENTITY], request[MEMBER] = identity, member
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        if not csrf_ok(dash.signer, identity, _field(form, "csrf")):
            return refuse(request, 403, "Form expired", "This form carried no valid token (reload the page and "
                          "try again). Nothing was changed.")
    return await handler(request)


def see_other(location: str) -> web.Response:
    """303: after a form, the browser GETs the result (a reload does not post again)."""
    return web.Response(status=303, headers={"Location": location})


def member_of(request: web.Request) -> Member:
    return request[MEMBER]


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


# -- public routes ----------------------------------------------------------------------------------
async def welcome(request: web.Request) -> web.Response:
    return render(request, "welcome.html")


async def login_page(request: web.Request) -> web.Response:
    """Opening a link only shows a button: link previews and prefetchers must not use up the one login
    (and a SameSite=Strict cookie set by a navigation that began in Discord would not be sent)."""
    dash, token = dashboard_of(request), request.query.get("t", "")
    try:
        read_login(dash.signer, token, dash.clock())
    except LoginRefused as refused:
        return refuse(request, 403, "Login refused", f"{refused} Run /dashboard in Discord for a new link.")
    return render(request, "login.html", token=token)


async def login(request: web.Request) -> web.StreamResponse:
    dash = dashboard_of(request)
    try:
        user_id, guild_id, nonce, expires = read_login(dash.signer, _field(await request.post(), "t") or "",
                                                       dash.clock())
    except LoginRefused as refused:
        return refuse(request, 403, "Login refused", f"{refused} Run /dashboard in Discord for a new link.")
    if not await asyncio.to_thread(dash.ledger.claim, nonce, expires):
        return refuse(request, 403, "Login refused", "This login link was already used: each link works once. "
                      "Run /dashboard in Discord for a new one.")
    value, identity = session_cookie(dash.signer, user_id, guild_id, dash.clock(), dash.settings.session_hours)
    await asyncio.to_thread(dash.sessions.add, identity)
    response = see_other("/rounds")
    response.set_cookie(COOKIE, value, max_age=int(dash.settings.session_hours * 3600), httponly=True,
                        samesite="Strict", secure=dash.secure_cookies, path="/")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """End this session on the server too: deleting the cookie alone would leave any copy of it working."""
    await asyncio.to_thread(dashboard_of(request).sessions.end, request[IDENTITY].session_id)
    return _logged_out()


async def logout_everywhere(request: web.Request) -> web.StreamResponse:
    """End every session of this moderator, in every browser (a lost laptop, a shared computer)."""
    user_id = request[IDENTITY].user_id
    ended = await asyncio.to_thread(dashboard_of(request).sessions.end_user, user_id)
    log.info("dashboard: user %s logged out everywhere (%d sessions ended)", user_id, ended)
    return _logged_out()


def _logged_out() -> web.StreamResponse:
    response = see_other("/welcome")
    response.del_cookie(COOKIE, path="/")
    return response


async def healthz(request: web.Request) -> web.Response:
    snapshot = await dashboard_of(request).snapshot()
    body = snapshot.health()
    return web.json_response(body, status=200 if body["ok"] else 503)


async def metrics(request: web.Request) -> web.Response:
    dash = dashboard_of(request)
    body = dash.metrics.render(await dash.snapshot())
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def stylesheet(request: web.Request) -> web.Response:
    css = resources.files("bot.dashboard").joinpath("static/dashboard.css").read_text(encoding="utf-8")
    return web.Response(text=css, content_type="text/css")


# -- images: only `images/<12 hex>/<k>.png` (or mask.png) of a round the read model shows -------------
class Thumbnails:
    """Small PNGs for the gallery, made once per image (a 512² candidate is ~400 KB; its thumbnail ~30)."""

    def __init__(self, size: int = 512) -> None:
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._size = size

    def get(self, path: Any) -> bytes:
        key = str(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with Image.open(path) as image:
            image.thumbnail((THUMB_PX, THUMB_PX))
            out = io.BytesIO()
            image.save(out, format="PNG")
        self._cache[key] = out.getvalue()
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return self._cache[key]


async def _image_path(request: web.Request) -> Any:
    dash = dashboard_of(request)
    round_id, name = request.match_info["round_id"], request.match_info["name"]
    if not ROUND_ID.fullmatch(round_id) or not IMAGE_NAME.fullmatch(name):
        raise web.HTTPBadRequest(text="not an image of a round")
    if await dash.read(dash.index.round, round_id) is None:  # unknown, or a /forget-me user's
        raise web.HTTPNotFound(text="no such round")
    root = (dash.config.data_dir / "images").resolve()
    path = (root / round_id / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound(text="no such image")
    return path


async def image(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(await _image_path(request), headers={"Content-Type": "image/png"})


async def thumbnail(request: web.Request) -> web.Response:
    path = await _image_path(request)
    data = await asyncio.to_thread(request.app[THUMBS].get, path)
    return web.Response(body=data, content_type="image/png")


THUMBS = web.AppKey("thumbs", Thumbnails)


def build_app(dash: Dashboard) -> web.Application:
    from ._actions import routes as action_routes
    from ._pages import routes as page_routes

    app = web.Application(middlewares=[body_limits(dash.settings.body_timeout_s), guard],
                          client_max_size=MAX_BODY_BYTES)
    app[DASHBOARD] = dash
    app[THUMBS] = Thumbnails()
    app.on_response_prepare.append(_security_headers)
    app.add_routes([
        web.get("/healthz", healthz), web.get("/metrics", metrics), web.get("/welcome", welcome),
        web.get("/login", login_page), web.post("/login", login), web.post("/logout", logout),
        web.post("/logout/everywhere", logout_everywhere),
        web.get("/static/dashboard.css", stylesheet),
        web.get("/images/{round_id}/{name}", image), web.get("/thumbs/{round_id}/{name}", thumbnail),
        *page_routes(), *action_routes(),
    ])
    return app
