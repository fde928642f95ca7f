"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), JavaScript off: a moderator
follows the link `/dashboard` gave them, sees the gallery with the votes cast (the toy model's shapes, in
the colour the prompt asked for), the lineage of a refined round, flags a round and exports. Screenshots
land in the test's tmp_path."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pipeline.toyworld import world as toy
from tests.bot.test_dashboard import login_link
from tests.cogs.test_export import make_round, until
from tests.conftest import World

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason=(
    "no /usr/bin/chromium: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does)"))]


async def test_moderator_uses_the_dashboard_in_a_browser(world: World, start_bot, toy_model: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    from playwright.async_api import async_playwright

    monkeypatch.setenv("REFINERY_EXPORT_KEY", "test-export-key-0123456789")
    server = world.server
    carol = server.add_user("carol", roles=[server.add_role("Mods")])
    async with start_bot({"moderation": {"moderator_roles": ["Mods"]}, "generation": {"default_steps": 10}},
                         model=toy_model) as app:
        msg_id, rid = await make_round(world, app, world.alice, "a blue circle on a white background")
        cast = [(world.alice, "1️⃣"), (world.bob, "1️⃣"), (carol, "3️⃣"), (world.bob, "4️⃣")]
        for user, emoji in cast:
            await server.add_reaction(world.imagine, msg_id, user, emoji)
        await server.remove_reaction(world.imagine, msg_id, world.bob, "4️⃣")  # a retraction: not counted
        await server.send_message(world.imagine, world.bob, "1: larger", reply_to=msg_id)

        async def settled() -> bool:
            state = await app.journal.vote_state(rid)
            children = await app.dashboard.read(app.dashboard.index.children, rid)
            return {k: len(v) for k, v in state.items() if v} == {1: 2, 3: 1} and len(children) == 1
        await until(settled, timeout=60)
        (child,) = await app.dashboard.read(app.dashboard.index.children, rid)
        link = await login_link(world, carol)

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                context = await browser.new_context(java_script_enabled=False, accept_downloads=True,
                                                    viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                await page.goto(link)
                await page.get_by_role("button", name="Continue to the dashboard").click()
                await page.wait_for_url(re.compile(r"/rounds$"))
                card = page.locator(f'li[data-round="{rid}"]')
                thumbs = card.locator(".thumbs img")
                assert await thumbs.count() == 4
                for k in range(4):  # each thumbnail really loaded (a broken image has no natural size)
                    await thumbs.nth(k).scroll_into_view_if_needed()
                    assert await thumbs.nth(k).evaluate("img => img.complete && img.naturalWidth > 0")
                # What the moderator sees is the toy world: blue shapes on white, as the prompt asked.
                seen = [toy.measure(Image.open(io.BytesIO(await thumbs.nth(k).screenshot()))) for k in range(4)]
                assert sum(m.colour == "blue" and m.background == "white" for m in seen) >= 3, seen
                assert await card.locator("span.votes").all_inner_texts() == ["2", "0", "1", "0"]
                assert "3 voters" in await card.inner_text()
                await page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)

                await page.goto(f"{app.dashboard.base_url}/rounds/{child.round_id}")
                tree = page.locator("svg.lineage")
                assert await tree.locator("g.node").count() == 2
                assert await tree.locator(f'g.node.current[data-round="{child.round_id}"]').count() == 1
                assert "#1 · img2img · larger" in (await tree.text_content() or "")
                await page.screenshot(path=str(tmp_path / "lineage.png"), full_page=True)

                await page.goto(f"{app.dashboard.base_url}/rounds")
                await card.get_by_role("button", name="Flag").click()
                await page.wait_for_url(re.compile(r"/rounds$"))
                assert await card.locator(".badge.flagged").is_visible()
                assert "is-flagged" in (await card.get_attribute("class") or "")
                await page.screenshot(path=str(tmp_path / "flagged.png"), full_page=True)
                (flag,) = [e.record for e in await app.journal.events("moderation")]
                assert (flag.action, flag.moderator_id, flag.round_id) == ("flag", carol, rid)

                await page.goto(f"{app.dashboard.base_url}/exports")
                await page.get_by_label("Name").fill("browser")
                await page.get_by_label("pairs", exact=True).check()
                await page.get_by_label("keep flagged rounds").check()
                await page.get_by_role("button", name="Export").click()
                await page.wait_for_url(re.compile(r"/exports\?made=browser$"), timeout=120_000)
                async with page.expect_download() as download:
                    await page.get_by_role("link", name="download browser.zip").click()
                saved = tmp_path / "browser.zip"
                await (await download.value).save_as(saved)
                await page.screenshot(path=str(tmp_path / "exports.png"), full_page=True)
                for name in ("activity", "status"):
                    await page.goto(f"{app.dashboard.base_url}/{name}")
                    assert await page.locator("h1").count() == 1
                    await page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
            finally:
                await browser.close()

    with zipfile.ZipFile(saved) as archive:
        archive.extractall(tmp_path / "unzipped")
    import datasets  # slow to import: only here

    pairs = datasets.load_dataset("parquet", data_files=str(tmp_path / "unzipped/browser/pairs/"
                                                            "train-00000-of-00001.parquet"),
                                  split="train", cache_dir=str(tmp_path / "hf-cache"))
    # Candidate 1 (two voters) beats 2, 4 and, two voters to one, 3; candidate 3 (one voter) beats 2 and 4.
    assert sorted((p["best_image_uid"], p["image_1_uid"] if p["label_0"] else p["image_0_uid"]) for p in pairs) == [
        (f"{rid}-1", f"{rid}-2"), (f"{rid}-1", f"{rid}-3"), (f"{rid}-1", f"{rid}-4"),
        (f"{rid}-3", f"{rid}-2"), (f"{rid}-3", f"{rid}-4")]
