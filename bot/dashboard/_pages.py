"""Read-only pages: the rounds gallery, a round with its lineage, activity, status, adapters and the arena.

Every query goes to the read model (`storage.round_index`), by index; nothing here replays the journal
except the arena results, which are the `/arena results` command's own service call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.errors import InvalidInput
from bot.moderation import parse_day
from pipeline.requests import Mode
from storage.round_index import GalleryFilter, RoundRow

from ._svg import MAX_DESCENDANTS, NODE_H, NODE_W, bar_chart, last_days, lineage_tree
from ._web import IDENTITY, dashboard_of, render

ACTIVITY_DAYS = 30


@dataclass(frozen=True)
class GalleryQuery:
    """The gallery's query string, checked (InvalidInput names the bad value), and kept for the links."""

    filter: GalleryFilter
    params: dict[str, str]  # the filters as given, for the form and the next-page link


def parse_gallery(query: Any, page_size: int) -> GalleryQuery:
    params = {k: str(query.get(k, "")).strip() for k in ("channel", "since", "until", "mode", "flagged", "min_votes")}
    channel = params["channel"]
    if channel and not (channel.isdigit() and 0 < int(channel) < 2**63):
        raise InvalidInput(f"channel={channel[:30]!r} is not a channel id.")
    if params["mode"] and params["mode"] not in {m.value for m in Mode}:
        raise InvalidInput(f"mode={params['mode'][:30]!r} is not one of {', '.join(m.value for m in Mode)}.")
    if params["flagged"] not in ("", "yes", "no"):
        raise InvalidInput(f"flagged={params['flagged'][:30]!r} must be yes, no or empty.")
    votes = params["min_votes"]
    if votes and not (votes.isdigit() and int(votes) <= 1_000_000):
        raise InvalidInput(f"min_votes={votes[:30]!r} must be a whole number from 0 to 1000000.")
    since, until = parse_day(params["since"], "since"), parse_day(params["until"], "until", end=True)
    before = None
    if cursor := str(query.get("before", "")):
        at, _, rid = cursor.partition(":")
        try:
            before = (float(at), rid)
        except ValueError:
            raise InvalidInput(f"before={cursor[:40]!r} is not a page cursor.") from None
    flagged = {"": None, "yes": True, "no": False}[params["flagged"]]
    return GalleryQuery(GalleryFilter(channel_id=int(channel) if channel else None, since=since, until=until,
                                      mode=params["mode"] or None, flagged=flagged, min_voters=int(votes or 0),
                                      before=before, limit=page_size), params)


async def gallery(request: web.Request) -> web.Response:
    dash = dashboard_of(request)
    try:
        query = parse_gallery(request.query, dash.settings.page_size)
    except InvalidInput as error:
        return render(request, "rounds.html", status=400, error=str(error), rows=[], next_page=None,
                      params={}, modes=[m.value for m in Mode], channels=[], first_page=True, newest={})
    rows, cursor = await dash.read(dash.index.page, query.filter)
    channels = await dash.read(dash.index.channels)
    newest = {k: v for k, v in query.params.items() if v}  # the same filters, from the top
    next_page = None if cursor is None else {**newest, "before": f"{cursor[0]!r}:{cursor[1]}"}
    return render(request, "rounds.html", error=None, rows=rows, next_page=next_page, params=query.params,
                  modes=[m.value for m in Mode], channels=channels, first_page=query.filter.before is None,
                  newest=newest)


async def round_page(request: web.Request) -> web.Response:
    dash = dashboard_of(request)
    round_id = request.match_info["round_id"]
    row = await dash.read(dash.index.round, round_id)
    if row is None:
        return render(request, "message.html", status=404, title="No such round",
                      message=f"There is no round {round_id[:40]!r} in the log (or its requester ran /forget-me).")
    found = await dash.service.journal.round(round_id)  # the full record: seeds, parameters, plan
    ancestors: list[RoundRow] = []
    parent = row.parent_round_id
    while parent and len(ancestors) < 50 and (up := await dash.query(dash.index.round, parent)) is not None:
        ancestors.insert(0, up)
        parent = up.parent_round_id
    children: dict[str, list[RoundRow]] = {}
    frontier, count, more = [row.round_id], 0, 0
    while frontier:  # breadth first: near descendants before far ones
        rid = frontier.pop(0)
        kids = await dash.query(dash.index.children, rid)
        if count >= MAX_DESCENDANTS:
            more += len(kids)
            continue
        children[rid], count = kids[: MAX_DESCENDANTS - count], count + len(kids)
        more += len(kids) - len(children[rid])
        frontier.extend(k.round_id for k in children[rid])
    timeline = await dash.query(dash.index.vote_timeline, round_id)
    plan = None
    if found is not None and found.plan:
        try:
            plan = json.dumps(json.loads(found.plan), indent=2, ensure_ascii=False)
        except ValueError:
            plan = found.plan
    link = None
    if row.message_id and row.guild_id:
        link = f"https://discord.com/channels/{row.guild_id}/{row.channel_id}/{row.message_id}"
    return render(request, "round.html", row=row, record=found, plan=plan, timeline=timeline, discord_link=link,
                  tree=lineage_tree(ancestors, row, children, more), node_w=NODE_W, node_h=NODE_H, when=_when)


async def activity(request: web.Request) -> web.Response:
    dash = dashboard_of(request)
    days = last_days(ACTIVITY_DAYS)
    since = time.time() - ACTIVITY_DAYS * 86400
    daily = await dash.read(dash.index.daily, days[0])
    charts = [bar_chart(title, daily.get(kind, {}), days) for kind, title in
              (("rounds", "Rounds per day"), ("votes", "Votes per day"), ("refinements", "Refinements per day"))]
    agreement, agreement_rounds = await dash.read(dash.index.agreement, since)
    return render(request, "activity.html", charts=charts, days=ACTIVITY_DAYS,
                  top_prompts=await dash.read(dash.index.top_prompts, since),
                  most_voted=await dash.read(dash.index.most_voted, since),
                  agreement=agreement, agreement_rounds=agreement_rounds)


async def status(request: web.Request) -> web.Response:
    dash = dashboard_of(request)
    snapshot = await dash.snapshot()
    listing = await dash.service.queue_view()
    adapters = dash.service.adapters
    return render(request, "status.html", s=snapshot, writer=dash.writer_status(), listing=listing,
                  model=dash.config.model.id, adapter=adapters.active, arena=adapters.arena,
                  redis=bool(dash.config.queue.redis_url), when=_when,
                  sessions=dash.sessions.count(request[IDENTITY].user_id, dash.clock()))


async def adapters_page(request: web.Request) -> web.Response:
    dash = dashboard_of(request)
    desk = dash.service.adapters
    results = await desk.results()
    return render(request, "adapters.html", adapters=await desk.adapters(), active=desk.active, arena=desk.arena,
                  results=results, when=_when)


def _when(at: float | None) -> str:
    return "—" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def routes() -> list[web.RouteDef]:
    async def home(request: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": "/rounds"})

    return [web.get("/", home), web.get("/rounds", gallery), web.get("/rounds/{round_id}", round_page),
            web.get("/activity", activity), web.get("/status", status), web.get("/adapters", adapters_page)]
