"""Pages that change things: moderation (flag, unflag, remove, banned phrases, the log) and exports.

Each form goes through the same service call as its slash command (`bot.service` / `bot.moderation`),
so the permission table (`bot.permissions`) and the journaled ModerationAction are the same; the only
difference is the reason recorded ("dashboard"). The guard has already checked the session, the
moderator permission and the CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.errors import RefineryError, user_message
from storage import export_repo
from storage.exports import FORMATS

from ._web import dashboard_of, member_of, refuse, render, see_other

_CHUNK = 1 << 20
# Where a form may send the browser back to: "/" and printable ASCII without a space or a backslash, the
# second character not "/". Browsers read /\host, //host and /<tab>/host as another host (they drop tabs
# and newlines and read a backslash as a slash), so each of those would be an open redirect.
SAME_SITE_PATH = re.compile(r"/(?![/\\])[!-\[\]-~]*")


def _when(at: float | None) -> str:
    return "—" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _text(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _back(form: Any, default: str) -> str:
    """Where a form returns to: a path on this site only, else `default`."""
    target = _text(form, "next")
    return target if SAME_SITE_PATH.fullmatch(target) else default


def _failed(request: web.Request, error: RefineryError) -> web.Response:
    return refuse(request, 400, "Not done", user_message(error).removeprefix("⚠️ "))


async def flag(request: web.Request) -> web.Response:
    dash, form = dashboard_of(request), await request.post()
    round_id, flagged = request.match_info["round_id"], request.match_info["action"] == "flag"
    try:
        await dash.service.moderation.set_flag(member_of(request), round_id, flagged=flagged, reason="dashboard")
    except RefineryError as error:
        return _failed(request, error)
    return see_other(_back(form, f"/rounds/{round_id}"))


async def remove(request: web.Request) -> web.Response:
    dash, form = dashboard_of(request), await request.post()
    round_id = request.match_info["round_id"]
    reason = " ".join(_text(form, "reason").split())[:200]
    try:
        found, message_id = await dash.service.moderation.remove(member_of(request), round_id,
                                                      reason=f"dashboard: {reason}".rstrip(": "))
    except RefineryError as error:
        return _failed(request, error)
    if dash.discord is not None:  # delete the message and tell the requester, as /remove does
        await dash.discord.take_down(found, message_id)
    return see_other(f"/rounds/{round_id}")


async def round_action(request: web.Request) -> web.Response:
    """The moderation page's form: flag, unflag or remove a round given by its id (or message id)."""
    form = await request.post()
    op, ref = _text(form, "op"), _text(form, "round")
    if op not in ("flag", "unflag", "remove"):
        return refuse(request, 400, "Not done", f"op={op[:20]!r} must be flag, unflag or remove.")
    dash, member = dashboard_of(request), member_of(request)
    try:
        if op == "remove":
            reason = " ".join(_text(form, "reason").split())[:200]
            found, message_id = await dash.service.moderation.remove(member, ref,
                                                                     reason=f"dashboard: {reason}".rstrip(": "))
            if dash.discord is not None:
                await dash.discord.take_down(found, message_id)
        else:
            found = await dash.service.moderation.set_flag(member, ref, flagged=op == "flag", reason="dashboard")
    except RefineryError as error:
        return _failed(request, error)
    return see_other(f"/rounds/{found.round_id}")


async def moderation_page(request: web.Request) -> web.Response:
    dash, member = dashboard_of(request), member_of(request)
    phrases = await dash.service.moderation.banned_list(member)
    log = await dash.service.moderation.modlog(member, limit=50)
    return render(request, "moderation.html", phrases=phrases, log=log, when=_when)


async def banned(request: web.Request) -> web.Response:
    dash, form = dashboard_of(request), await request.post()
    add = _text(form, "op") != "remove"
    try:
        await dash.service.moderation.change_banned(member_of(request), _text(form, "phrase"), add=add)
    except RefineryError as error:
        return _failed(request, error)
    return see_other("/moderation")


# -- exports --------------------------------------------------------------------------------------------
def past_exports(folder: Path) -> list[dict[str, Any]]:
    found = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            if export_repo.NAME.match(child.name):
                found.append(json.loads((child / "export.json").read_text(encoding="utf-8")))
    return sorted(found, key=lambda meta: meta.get("created_at", 0), reverse=True)


async def exports_page(request: web.Request) -> web.Response:
    dash = dashboard_of(request)
    made = await asyncio.to_thread(past_exports, dash.config.data_dir / "exports")
    return render(request, "exports.html", exports=made, formats=FORMATS, just_made=request.query.get("made"))


async def create_export(request: web.Request) -> web.Response:
    dash, form = dashboard_of(request), await request.post()
    channel, votes = _text(form, "channel"), _text(form, "min_votes")
    if (channel and not channel.isdigit()) or (votes and not votes.isdigit()):
        return refuse(request, 400, "Not done", f"channel={channel[:30]!r} and min_votes={votes[:30]!r} must be "
                      "whole numbers (or empty).")
    try:
        summary = await dash.service.moderation.export(
            member=member_of(request), formats=[f for f in form.getall("formats", []) if isinstance(f, str)],
            since=_text(form, "since") or None, until=_text(form, "until") or None,
            channel_id=int(channel) if channel else None, min_votes=int(votes) if votes else None,
            include_flagged=bool(_text(form, "include_flagged")), name=_text(form, "name") or None,
            include_edit_rounds=bool(_text(form, "include_edit_rounds")))
    except RefineryError as error:
        return _failed(request, error)
    return see_other(f"/exports?made={summary.name}")


def _zip_to_file(folder: Path) -> Path:
    """The export folder as a zip in a temporary file (exports hold images: not built in memory)."""
    handle, name = tempfile.mkstemp(prefix="refinery-export-", suffix=".zip")
    os.close(handle)
    with zipfile.ZipFile(name, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if ".oxen" not in relative.parts:
                archive.write(path, f"{folder.name}/{relative.as_posix()}")
    return Path(name)


async def download_export(request: web.Request) -> web.StreamResponse:
    dash, name = dashboard_of(request), request.match_info["name"]
    folder = dash.config.data_dir / "exports" / name
    if not export_repo.NAME.match(name) or not (folder / "export.json").is_file():
        return refuse(request, 404, "No such export", f"There is no export named {name[:64]!r}.")
    archive = await asyncio.to_thread(_zip_to_file, folder)
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/zip",
                                               "Content-Disposition": f'attachment; filename="{name}.zip"'})
        response.content_length = archive.stat().st_size
        await response.prepare(request)
        with open(archive, "rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        archive.unlink(missing_ok=True)


def routes() -> list[web.RouteDef]:
    return [web.post(r"/rounds/{round_id}/{action:flag|unflag}", flag), web.post("/rounds/{round_id}/remove", remove),
            web.get("/moderation", moderation_page), web.post("/moderation/banned", banned),
            web.post("/moderation/round", round_action),
            web.get("/exports", exports_page), web.post("/exports", create_export),
            web.get("/exports/{name}.zip", download_export)]
