"""The dashboard over HTTP (a real socket, the real bot on the loopback Discord): health, metrics, logins,
sessions, CSRF, the permission re-check and the image routes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
import zipfile
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import yarl
from prometheus_client.parser import text_string_to_metric_families

from bot.dashboard._auth import COOKIE, Identity, SessionLedger, login_token
from tests.cogs.test_export import make_round, slash, until
from tests.conftest import World

EPHEMERAL = 64
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/login\?t=\S+)")


def metric_values(text: str) -> dict[str, float]:
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


async def get(url: str, **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False, **kwargs) as response:
        return response.status, await response.text(errors="replace"), response


async def post(url: str, data: dict[str, str], **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, allow_redirects=False,
                                                          **kwargs) as response:
        return response.status, await response.text(errors="replace"), response


async def login_link(world: World, user: int) -> str:
    answer = await slash(world, "dashboard", {}, user)
    data = answer.responses[0]["data"]
    assert data["flags"] & EPHEMERAL
    found = LINK.search(data["content"])
    assert found, data["content"]
    return found.group(1)


async def log_in(link: str) -> dict[str, str]:
    """Follow a link as a browser does (open, then press Continue); the session cookie."""
    status, page, _ = await get(link)
    assert status == 200 and "Continue to the dashboard" in page
    token = yarl.URL(link).query["t"]
    status, _, response = await post(str(yarl.URL(link).with_query(None)), {"t": token})
    assert status == 303 and response.headers["Location"] == "/rounds"
    cookie = SimpleCookie(response.headers["Set-Cookie"])[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    return {COOKIE: cookie.value}


async def test_healthz_and_metrics(world: World, start_bot) -> None:
    """/healthz is 200 while the writer runs and 503 once it is stopped; /metrics parses and counts what
    was journaled (a round, two votes, a generation time), with no login."""
    async with start_bot(start_writer=True) as app:
        base = app.dashboard.base_url
        msg_id, _ = await make_round(world, app, world.alice, "a red fox")
        await world.server.add_reaction(world.imagine, msg_id, world.alice, "1️⃣")
        await world.server.add_reaction(world.imagine, msg_id, world.bob, "3️⃣")

        async def voted() -> bool:
            return metric_values((await get(f"{base}/metrics"))[1]).get("refinery_votes_total") == 2
        await until(voted)
        status, text, response = await get(f"{base}/metrics")
        assert status == 200 and response.headers["Content-Type"].startswith("text/plain")
        values = metric_values(text)
        assert values["refinery_rounds_total"] == 1 and values["refinery_refinements_total"] == 0
        assert values["refinery_generation_seconds_count"] == 1 and values["refinery_queue_depth"] == 0
        assert values["refinery_writer_running"] == 1 and values["refinery_discord_connected"] == 1
        assert "refinery_writer_lag_seconds" in values and "refinery_dropped_events_total" in values
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        assert body["ok"] and body["writer"]["running"] and body["queue"]["depth"] == 0
        await asyncio.to_thread(app.writer.stop)
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
            assert response.status == 503
            body = await response.json()
        assert body["problems"] == ["the Oxen writer is not running"]


async def test_login_links_sessions_and_csrf(world: World, start_bot) -> None:
    """A plain member gets no link; forged, expired and reused links are refused; a session cookie opens
    the pages; a POST without the CSRF token changes nothing; with it, the flag is journaled."""
    server = world.server
    mods = server.add_role("Mods")
    carol = server.add_user("carol", roles=[mods])
    async with start_bot({"moderation": {"moderator_roles": ["Mods"]},
                          "dashboard": {"permission_cache_s": 0}}) as app:
        base = app.dashboard.base_url
        _, round_id = await make_round(world, app, world.alice, "a blue whale")

        refused = await slash(world, "dashboard", {}, world.bob)
        assert "Only moderators can open the dashboard" in refused.responses[0]["data"]["content"]
        assert "login" not in refused.responses[0]["data"]["content"]

        status, _, response = await get(f"{base}/rounds")
        assert status == 303 and response.headers["Location"] == "/welcome"
        status, page, _ = await get(f"{base}/welcome")
        assert status == 200 and "Log in from Discord" in page and "/dashboard" in page

        link = await login_link(world, carol)
        token = yarl.URL(link).query["t"]
        forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        for bad in (forged, token.replace(str(carol), str(world.bob)),
                    login_token(app.dashboard.signer, carol, server.guild_id, time.time() - 601)):
            status, page, _ = await get(f"{base}/login", params={"t": bad})
            assert status == 403 and "Login refused" in page
            status, _, _ = await post(f"{base}/login", {"t": bad})
            assert status == 403
        cookies = await log_in(link)
        status, page, _ = await post(f"{base}/login", {"t": token})
        assert status == 403 and "already used" in page

        status, page, _ = await get(f"{base}/rounds", cookies=cookies)
        assert status == 200 and round_id in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        for data in ({}, {"csrf": "not-the-token"}):
            status, page, _ = await post(f"{base}/rounds/{round_id}/flag", data, cookies=cookies)
            assert status == 403 and "Nothing was changed" in page
        status, _, _ = await post(f"{base}/rounds/{round_id}/flag", {"csrf": csrf})  # no session
        assert status == 403
        assert not await app.journal.events("moderation")
        status, _, response = await post(f"{base}/rounds/{round_id}/flag", {"csrf": csrf}, cookies=cookies)
        assert status == 303 and response.headers["Location"] == f"/rounds/{round_id}"
        (flag,) = [e.record for e in await app.journal.events("moderation")]
        assert (flag.action, flag.moderator_id, flag.round_id, flag.reason) == ("flag", carol, round_id, "dashboard")

        server.remove_role(carol, mods)  # demoted in Discord: the next request is refused
        status, page, response = await get(f"{base}/rounds", cookies=cookies)
        assert status == 403 and "not a moderator" in page
        status, _, _ = await get(f"{base}/healthz")
        assert status == 200  # /healthz and /metrics need no login


async def test_image_routes_serve_only_round_images(world: World, start_bot) -> None:
    """Images and thumbnails of a round are served to a moderator; path tricks and other files are not."""
    owner = world.server.owner_id
    async with start_bot() as app:
        base = app.dashboard.base_url
        _, round_id = await make_round(world, app, world.alice, "a green frog")
        cookies = await log_in(await login_link(world, owner))
        status, _, response = await get(f"{base}/images/{round_id}/1.png", cookies=cookies)
        assert status == 200 and response.headers["Content-Type"] == "image/png"
        status, _, response = await get(f"{base}/thumbs/{round_id}/4.png", cookies=cookies)
        assert status == 200 and response.headers["Content-Type"] == "image/png"
        status, _, _ = await get(f"{base}/images/{round_id}/1.png")
        assert status == 303  # not without a session
        journal = app.config.journal_path.read_bytes()[:16]
        for path in (f"/images/{round_id}/..%2F..%2Fjournal.sqlite3", "/images/..%2F..%2F/journal.sqlite3",
                     f"/images/{round_id}/%2e%2e%2f%2e%2e%2fjournal.sqlite3",
                     f"/images/{round_id}/../../journal.sqlite3", "/images/../journal.sqlite3",
                     f"/thumbs/{round_id}/..%2F1.png", f"/images/{round_id}/5.png",
                     "/images/0123456789ab/1.png"):
            async with aiohttp.ClientSession(cookies=cookies) as http, \
                    http.get(yarl.URL(base + path, encoded=True), allow_redirects=False) as response:
                body = await response.read()
            assert response.status in (400, 404), (path, response.status)
            assert journal not in body


async def test_pages_moderation_and_exports(world: World, start_bot, monkeypatch) -> None:
    """Gallery filters, a refined round's lineage drawn as inline SVG, banned phrases and remove through the
    service (journaled as from the slash commands), and an export created, listed and downloaded as a zip."""
    monkeypatch.setenv("REFINERY_EXPORT_KEY", "test-export-key-0123456789")
    owner = world.server.owner_id
    async with start_bot() as app:
        base = app.dashboard.base_url
        msg_id, parent = await make_round(world, app, world.alice, "a red fox")
        await world.server.add_reaction(world.imagine, msg_id, world.bob, "2️⃣")
        await world.server.send_message(world.imagine, world.bob, "2: in watercolor", reply_to=msg_id)
        child = await world.server.wait_for_message(
            lambda m: len(m["attachments"]) == 4 and int(m["id"]) != msg_id, timeout=60)
        await until(lambda: _has_child(app, parent))
        cookies = await log_in(await login_link(world, owner))

        status, page, _ = await get(f"{base}/rounds", cookies=cookies)
        assert status == 200 and page.count('class="round') == 2 and page.count("/thumbs/") == 8
        status, page, _ = await get(f"{base}/rounds", params={"mode": "img2img"}, cookies=cookies)
        assert page.count('class="round') == 1 and f"↳ from <a href=\"/rounds/{parent}\"" in page
        status, page, _ = await get(f"{base}/rounds", params={"since": "yesterday"}, cookies=cookies)
        assert status == 400 and "is not a date" in page

        (child_id,) = [r.round_id for r in (await app.dashboard.read(app.dashboard.index.children, parent))]
        assert child["id"]
        status, page, _ = await get(f"{base}/rounds/{child_id}", cookies=cookies)
        assert status == 200 and '<svg class="lineage"' in page
        assert f'data-round="{parent}"' in page and f'data-round="{child_id}"' in page
        assert "#2 · img2img · in watercolor" in page and "seed " in page
        status, page, _ = await get(f"{base}/rounds/{parent}", cookies=cookies)
        assert 'class="votes" data-candidate="2">1<' in page and "took back" not in page

        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        status, _, _ = await post(f"{base}/moderation/banned", {"csrf": csrf, "op": "add", "phrase": "kraken"},
                                  cookies=cookies)
        assert status == 303
        status, page, _ = await get(f"{base}/moderation", cookies=cookies)
        assert "<code>kraken</code>" in page and "banned_add" in page
        # Exported before the remove below: an export of nothing but removed rounds is refused.
        status, _, response = await post(f"{base}/exports", {"csrf": csrf, "name": "weekly", "formats": "ratings"},
                                         cookies=cookies)
        assert status == 303 and response.headers["Location"] == "/exports?made=weekly"
        status, _, _ = await post(f"{base}/moderation/round", {"csrf": csrf, "op": "remove", "round": parent,
                                                               "reason": "spam"}, cookies=cookies)
        assert status == 303
        await until(lambda: _gone(world, msg_id))
        actions = [(e.record.action, e.record.moderator_id, e.record.round_id, e.record.reason)
                   for e in await app.journal.events("moderation")]
        assert [a for a in actions if a[0] != "export"] == [("banned_add", owner, None, "kraken"),
                                                            ("remove", owner, parent, "dashboard: spam")]
        assert [a[0] for a in actions].count("export") == 1
        status, page, _ = await get(f"{base}/rounds/{parent}", cookies=cookies)
        assert "badge removed" in page

        status, page, _ = await get(f"{base}/exports", cookies=cookies)
        assert "weekly.zip" in page
        async with aiohttp.ClientSession(cookies=cookies) as http, http.get(f"{base}/exports/weekly.zip") as response:
            assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
            archive = zipfile.ZipFile(io.BytesIO(await response.read()))
        assert "weekly/ratings/train.parquet" in archive.namelist()
        assert len(pq.read_table(io.BytesIO(archive.read("weekly/ratings/train.parquet")))) == 4
        assert not any("/.oxen/" in name for name in archive.namelist())
        status, _, _ = await get(f"{base}/exports/..%2Fjournal.zip", cookies=cookies)
        assert status == 404
        for page_path in ("/activity", "/status"):
            status, page, _ = await get(base + page_path, cookies=cookies)
            assert status == 200, (page_path, page[-2000:])
        adapter = app.config.models_path / "redder"
        adapter.mkdir(parents=True)
        (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"not really weights")
        (adapter / "training.json").write_text('{"method": "dpo", "steps_done": 24, "held_out_accuracy": 0.75}')
        status, page, _ = await get(f"{base}/adapters", cookies=cookies)
        assert status == 200 and "<td>redder</td><td>dpo</td><td>24</td>" in page and "0.75" in page
        assert "No arena round yet" in page


async def test_dashboard_turned_off(world: World, start_bot) -> None:
    """With [dashboard] enabled = false nothing listens and /dashboard says the dashboard is off."""
    async with start_bot({"dashboard": {"enabled": False}}) as app:
        assert app.dashboard is None
        answer = await slash(world, "dashboard", {}, world.server.owner_id)
        assert "turned off" in answer.responses[0]["data"]["content"]


async def _has_child(app: Any, parent: str) -> bool:
    return bool(await app.dashboard.read(app.dashboard.index.children, parent))


async def _gone(world: World, message_id: int) -> bool:
    return message_id not in {int(m["id"]) for m in world.server.channel_messages(world.imagine)}


async def test_non_ascii_tokens_are_refused_as_forged(world: World, start_bot) -> None:
    """A login link, session cookie or CSRF token with non-ASCII characters is refused as a forged one is
    (403; a GET without a valid session goes to /welcome), never a 500."""
    async with start_bot() as app:
        base, round_id = app.dashboard.base_url, "0123456789ab"
        status, page, _ = await get(yarl.URL(f"{base}/login?t=%C3%A9.%C3%A9", encoded=True))
        assert status == 403 and "Login refused" in page
        status, page, _ = await post(f"{base}/login", {"t": "é.é"})
        assert status == 403 and "Login refused" in page
        for forged in ("é.é", f"{world.server.owner_id}.{world.server.guild_id}.9999999999.é.é"):
            status, _, response = await get(f"{base}/rounds", headers={"Cookie": f"{COOKIE}={forged}"})
            assert status == 303 and response.headers["Location"] == "/welcome", forged
            status, page, _ = await post(f"{base}/rounds/{round_id}/flag", {"csrf": "é"},
                                         headers={"Cookie": f"{COOKIE}={forged}"})
            assert status == 403 and "Not signed in" in page, forged
        cookies = await log_in(await login_link(world, world.server.owner_id))
        for csrf in ("é", "é" * 43, "ü.ü"):
            status, page, _ = await post(f"{base}/rounds/{round_id}/flag", {"csrf": csrf}, cookies=cookies)
            assert status == 403 and "Nothing was changed" in page, csrf
        assert not await app.journal.events("moderation")


async def test_a_form_returns_only_to_a_path_on_this_site(world: World, start_bot) -> None:
    """flag/unflag follow `next` only when it is a path on this site (one leading /, no backslash, no control
    character or space); anything a browser could read as another host returns to the round's page."""
    async with start_bot() as app:
        base = app.dashboard.base_url
        _, round_id = await make_round(world, app, world.alice, "a red fox")
        cookies = await log_in(await login_link(world, world.server.owner_id))
        _, page, _ = await get(f"{base}/rounds/{round_id}", cookies=cookies)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        away = ("/\\evil.example/", "/\t/evil.example/", "//evil.example/", "/\\/evil.example/", "\\\\evil.example",
                "https://evil.example/", "/\n/evil.example/", "/\r\n/evil.example", "/\x00/evil.example",
                "/\x7f/evil.example", "evil.example", "/ /evil.example", "/\u3000/evil.example", "javascript:x")
        for i, target in enumerate(away):
            action = "flag" if i % 2 == 0 else "unflag"
            status, _, response = await post(f"{base}/rounds/{round_id}/{action}", {"csrf": csrf, "next": target},
                                             cookies=cookies)
            assert status == 303 and response.headers["Location"] == f"/rounds/{round_id}", repr(target)
        for target in ("/rounds", "/rounds?mode=img2img&before=2", f"/rounds/{round_id}#plan"):
            status, _, response = await post(f"{base}/rounds/{round_id}/flag", {"csrf": csrf, "next": target},
                                             cookies=cookies)
            assert status == 303 and response.headers["Location"] == target


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[-2000:]
    return found.group(1)


async def test_logout_ends_the_session_on_the_server(world: World, start_bot) -> None:
    """After POST /logout the same cookie opens nothing (the session ends on the server, not only in the
    browser); "log out everywhere" ends every session of that moderator and no one else's."""
    server, owner = world.server, world.server.owner_id
    carol = server.add_user("carol", roles=[server.add_role("Mods")])
    async with start_bot({"moderation": {"moderator_roles": ["Mods"]}}) as app:
        base = app.dashboard.base_url
        first, second = [await log_in(await login_link(world, owner)) for _ in range(2)]
        other = await log_in(await login_link(world, carol))
        status, page, _ = await get(f"{base}/rounds", cookies=first)
        assert status == 200
        status, _, response = await post(f"{base}/logout", {"csrf": _csrf(page)}, cookies=first)
        assert status == 303 and response.headers["Location"] == "/welcome"
        status, _, response = await get(f"{base}/rounds", cookies=first)  # the cookie as an attacker kept it
        assert status == 303 and response.headers["Location"] == "/welcome"
        status, page, _ = await post(f"{base}/rounds/0123456789ab/flag", {"csrf": _csrf(page)}, cookies=first)
        assert status == 403 and "Not signed in" in page
        assert (await get(f"{base}/rounds", cookies=second))[0] == 200  # another browser stays signed in

        third = await log_in(await login_link(world, owner))
        status, page, _ = await get(f"{base}/status", cookies=third)
        assert status == 200 and "signed in to the dashboard in 2 browsers" in page
        assert 'action="/logout/everywhere"' in page
        status, _, response = await post(f"{base}/logout/everywhere", {"csrf": _csrf(page)}, cookies=third)
        assert status == 303 and response.headers["Location"] == "/welcome"
        for cookies in (second, third):
            status, _, response = await get(f"{base}/rounds", cookies=cookies)
            assert status == 303 and response.headers["Location"] == "/welcome"
        assert (await get(f"{base}/rounds", cookies=other))[0] == 200  # carol's session is hers


def test_sessions_outlive_a_restart_and_so_do_logouts(tmp_path: Path) -> None:
    """The session ledger is on disk: with a fixed REFINERY_DASHBOARD_KEY a restart keeps who is signed in,
    and a session ended before the restart stays ended."""
    path, now = tmp_path / "dashboard-logins.sqlite3", time.time()
    kept, ended = (Identity(7, 1, now + 3600, f"session-{i}") for i in range(2))
    ledger = SessionLedger(path)
    ledger.add(kept)
    ledger.add(ended)
    ledger.end(ended.session_id)
    ledger.close()
    again = SessionLedger(path)
    assert again.live(kept) and not again.live(ended) and again.count(7, now) == 1
    assert not again.live(Identity(8, 1, now + 3600, kept.session_id))  # the id belongs to user 7 only
    assert again.end_user(7) == 1 and not again.live(kept)
    again.close()


async def _until_closed(reader: asyncio.StreamReader, limit_s: float) -> tuple[bytes, float]:
    """What the server sends until it closes the socket, and how long that took (fails past `limit_s`)."""
    started, got = time.monotonic(), b""
    try:
        async with asyncio.timeout(limit_s):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        raise AssertionError(f"the server held the socket over {limit_s} s (sent {got[:80]!r})") from None
    except ConnectionResetError:
        pass
    return got, time.monotonic() - started


async def test_idle_slow_and_oversized_requests_are_cut_off(world: World, start_bot) -> None:
    """Sockets that send no request, a header a byte at a time, a body declared over the limit or a body that
    stops coming are answered (413, 408) or closed within [dashboard] idle_timeout_s / body_timeout_s."""
    async with start_bot({"dashboard": {"idle_timeout_s": 0.5, "body_timeout_s": 0.5}}) as app:
        port = app.dashboard.port
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
        for reader, writer in idle:
            assert (await _until_closed(reader, 3.0))[0] == b""
            writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        dripping = asyncio.create_task(_until_closed(reader, 3.0))
        with contextlib.suppress(ConnectionError):
            while not dripping.done():  # one byte of a header every 0.1 s: never a whole request
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.1)
        assert not (await dripping)[0].startswith(b"HTTP/1.1 200")
        writer.close()

        form = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        for length, status in ((10737418240, b"413"), (100, b"408")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(form + b"Content-Length: %d\r\n\r\nt=abc" % length)
            got, _ = await _until_closed(reader, 4.0)
            assert got.startswith(b"HTTP/1.1 " + status), (length, got[:200])
            writer.close()
        status, _, _ = await get(f"{app.dashboard.base_url}/welcome")
        assert status == 200  # and the server still serves


async def test_malformed_and_aborted_requests_log_one_quiet_line(world: World, start_bot, caplog) -> None:
    """Parser errors (a bad method, a header without a colon, a line too long, a bad chunk, a broken form) and
    clients gone mid-body write no ERROR, WARNING or traceback, and get no 500: one DEBUG line counts them,
    at most once a minute."""
    caplog.set_level(logging.DEBUG)
    bad = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
           b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
           b"GET /welcome HTTP/1.1\r\nHost: x\r\n\r\nBAD\x00 / HTTP/1.1\r\n\r\n",
           b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
           b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
           b"Content-Length: 24\r\n\r\n--y\r\nnonsense\r\n\r\n--x--\r\n"]
    async with start_bot() as app:
        port = app.dashboard.port
        for data in bad * 3:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            got = await asyncio.wait_for(reader.read(65536), 5.0)  # the answer's start, or b"" once closed
            assert b" 500 " not in got.split(b"\r\n", 1)[0], (data[:60], got[:200])
            writer.close()
        for _ in range(10):  # a form that stops half-way: the client goes away
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 1000\r\n\r\nt=abc")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
        await asyncio.sleep(0.5)
        status, _, _ = await get(f"{app.dashboard.base_url}/welcome")
        assert status == 200

        async def broken() -> None:
            raise RuntimeError("a bug of the dashboard's own")
        app.dashboard.snapshot = broken  # a fault of ours is still an ERROR with its traceback
        assert (await get(f"{app.dashboard.base_url}/healthz"))[0] == 500
    ours = [r for r in caplog.records if r.name.startswith(("aiohttp", "bot.dashboard"))]
    loud = [(r.name, r.levelname, r.exc_info[1] if r.exc_info else None) for r in ours
            if r.levelno >= logging.WARNING or r.exc_info]
    assert [(name, level, str(error)) for name, level, error in loud] == [
        ("aiohttp.server", "ERROR", "a bug of the dashboard's own")], loud
    quiet = [r.getMessage() for r in ours if "malformed or aborted" in r.getMessage()]
    assert len(quiet) == 1 and quiet[0].startswith("dashboard: 1 malformed or aborted request since start-up (the "
                                                   "latest: "), quiet
    assert "\n" not in quiet[0]
