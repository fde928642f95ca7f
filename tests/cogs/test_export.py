"""Moderation and exports end to end: the real client, the loopback server, the journal, a real Oxen repo."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bot.devserver import MANAGE_GUILD
from tests.conftest import World
from tests.oxen_reader import committed_rows, committed_tree

ONE, TWO, THREE, FOUR, FLAG = "1️⃣", "2️⃣", "3️⃣", "4️⃣", "🚩"
KEY = "test-export-key-0123456789"
EPHEMERAL = 64


async def make_round(world: World, app: Any, user: int, prompt: str) -> tuple[int, str]:
    """(message id, round id) of a round made by `user` through /imagine."""
    interaction = await world.server.invoke_slash("imagine", {"prompt": prompt}, user_id=user,
                                                  channel_id=world.imagine)
    await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)
    message = interaction.original
    assert message is not None
    await world.server.wait_for_request(lambda r: r.method == "PUT" and FOUR in r.path
                                        and str(message["id"]) in r.path)  # the bot's own emoji are done
    return int(message["id"]), (await app.service.round_for_message(int(message["id"]))).round_id


async def until(check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def moderation_count(app: Any) -> int:
    return (await app.journal.stats()).by_kind.get("moderation", 0)


async def slash(world: World, name: str, options: dict[str, Any], user: int, done: Any = None) -> Any:
    interaction = await world.server.invoke_slash(name, options, user_id=user, channel_id=world.imagine)
    await interaction.wait_for(done or (lambda i: bool(i.responses)), timeout=120)
    return interaction


def sha256_tree(folder: Path) -> dict[str, str]:
    """Every file of a folder but Oxen's own (.oxen/), by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".oxen" not in p.relative_to(folder).parts}


@pytest.mark.slow
async def test_moderator_export_leaves_out_flagged_and_forgotten(world: World, start_bot, monkeypatch) -> None:
    """A log built through the client exports exactly the expected rows, into its own Oxen repository that holds
    the export and nothing else; the log's repository is untouched by it."""
    monkeypatch.setenv("REFINERY_EXPORT_KEY", KEY)
    server = world.server
    carol = server.add_user("carol", roles=[server.add_role("Mods")])  # the moderator
    async with start_bot({"moderation": {"moderator_roles": ["Mods"]}}, start_writer=True) as app:
        a_msg, a = await make_round(world, app, world.alice, "a red fox")
        b_msg, b = await make_round(world, app, world.bob, "a blue whale")
        c_msg, c = await make_round(world, app, world.alice, "a green frog")
        ch = world.imagine
        await server.add_reaction(ch, a_msg, world.alice, TWO)
        await server.add_reaction(ch, a_msg, carol, THREE)
        await server.remove_reaction(ch, a_msg, carol, THREE)  # a retraction
        await server.add_reaction(ch, a_msg, carol, ONE)
        await server.add_reaction(ch, a_msg, world.bob, FOUR)  # bob opts out below: his vote goes too
        await server.add_reaction(ch, b_msg, world.alice, ONE)
        await server.add_reaction(ch, c_msg, world.alice, ONE)
        await server.add_reaction(ch, a_msg, world.bob, FLAG)  # not a moderator: only an emoji
        await server.add_reaction(ch, c_msg, carol, FLAG)  # a moderator: round c is flagged
        forget = await slash(world, "forget-me", {}, world.bob)
        assert forget.responses[0]["data"]["flags"] & EPHEMERAL
        assert "leaves out your rounds" in forget.responses[0]["data"]["content"]

        async def settled() -> bool:
            state = await app.journal.vote_state(a)
            return ({k: v for k, v in state.items() if v} == {2: {world.alice}, 1: {carol}, 4: {world.bob}}
                    and bool(await app.journal.vote_state(c)) and await moderation_count(app) == 2)
        await until(settled)

        refused = await slash(world, "export", {"name": "sneaky"}, world.alice)
        assert refused.responses[0]["type"] == 4 and refused.responses[0]["data"]["flags"] & EPHEMERAL
        assert "Only moderators can export datasets" in refused.responses[0]["data"]["content"]
        data_dir = app.config.data_dir
        assert not (data_dir / "exports").exists()
        assert await moderation_count(app) == 2

        started = time.monotonic()
        answer = await slash(world, "export", {"name": "weekly"}, carol,
                             lambda i: bool(i.original and "📦" in i.original["content"]))
        export_s = time.monotonic() - started
        assert answer.responses[0]["type"] == 5 and answer.responses[0]["data"]["flags"] & EPHEMERAL
        text = answer.original["content"]
        assert ("4 ratings · 4 pairs · 6 voter_pairs · 2 rankings · 4 kto · 0 edits · 0 edit_pairs · 0 arena "
                "from 1 round."
                in text), text
        assert "the folder is its own repository (only this export), commit `" in text, text
        (attachment,) = answer.original["attachments"]
        assert attachment["filename"] == "weekly.zip"
        with zipfile.ZipFile(io.BytesIO(server.attachment_bytes(attachment["url"]))) as archive:
            assert "weekly/ratings/train.parquet" in archive.namelist()
            assert not any("/.oxen/" in name for name in archive.namelist())

        folder = data_dir / "exports" / "weekly"
        ratings = pq.read_table(folder / "ratings" / "train.parquet").to_pylist()
        assert [(r["round_id"], r["candidate"], r["net_votes"], r["rating"]) for r in ratings] == [
            (a, 1, 1, "good"), (a, 2, 1, "good"), (a, 3, 0, "bad"), (a, 4, 0, "bad")]
        assert all(r["prompt"] == "a red fox" for r in ratings)
        import datasets  # slow to import: only here

        pairs = datasets.load_dataset("parquet", data_files=str(folder / "pairs" / "train-00000-of-00001.parquet"),
                                      split="train", cache_dir=str(data_dir / "hf-cache"))
        winner_loser = sorted((p["best_image_uid"], p["image_1_uid"] if p["label_0"] else p["image_0_uid"])
                              for p in pairs)
        assert winner_loser == [(f"{a}-1", f"{a}-3"), (f"{a}-1", f"{a}-4"), (f"{a}-2", f"{a}-3"), (f"{a}-2", f"{a}-4")]
        rankings = pq.read_table(folder / "rankings" / "train.parquet").to_pylist()
        assert sorted(r["best_image_uid"] for r in rankings) == [f"{a}-1", f"{a}-2"]
        everything = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
        for absent in (b, c, str(world.bob), str(world.alice), str(carol)):
            assert absent.encode() not in everything, f"{absent} leaked into the export"

        elsewhere = await slash(world, "export", {"name": "general-only", "formats": "ratings, pairs",
                                                  "channel": world.general, "min_votes": 1}, carol,
                                lambda i: bool(i.original and "⚠️" in i.original["content"]))
        assert "Nothing to export: no round gave a row for ratings, pairs" in elsewhere.original["content"]
        assert not (data_dir / "exports" / "general-only").exists()

        await server.add_reaction(ch, a_msg, world.alice, THREE)  # after the exports: must land on main
        await until(lambda: app.journal.has_vote(a, 3, world.alice))
        assert app.writer is not None and await asyncio.to_thread(app.writer.flush, 60)
        repo = app.config.oxen_repo_path

    main = committed_rows(repo)
    assert main["branch"] == "main" and not main["models"]
    assert main["log"][0].startswith("refinery: ") and not any("refinery export" in m for m in main["log"])
    assert (world.alice, 3, "add") in [(v["user_id"], v["candidate"], v["action"]) for v in main["tables"]["votes"]]
    assert {r["round_id"] for r in main["tables"]["rounds"]} == {a, b, c}
    assert len(main["images"]) == 12
    moderation = [(m["action"], m["moderator_id"], m["round_id"], m["target_user_id"])
                  for m in main["tables"]["moderation"]]
    # the 🚩 and /forget-me events race each other to the journal; the export comes after both
    assert set(moderation[:2]) == {("flag", carol, c, world.alice), ("forget_me", world.bob, None, world.bob)}
    assert moderation[2:] == [("export", carol, None, None)]  # the export that matched nothing is not one

    published = committed_tree(folder)
    assert published["log"] == [published["log"][0]] and published["log"][0].startswith(
        "refinery export weekly: 4 ratings, 4 pairs, 6 voter_pairs, 2 rankings, 4 kto, 0 edits, 0 edit_pairs")
    assert published["files"] == sha256_tree(folder)
    print(f"\n/export answered in {export_s:.2f} s")


async def test_export_without_a_key_is_refused_and_writes_nothing(world: World, start_bot, monkeypatch) -> None:
    """A moderator (Manage Server) without REFINERY_EXPORT_KEY set gets a private error naming it."""
    monkeypatch.delenv("REFINERY_EXPORT_KEY", raising=False)
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        answer = await slash(world, "export", {"formats": "ratings"}, owner,
                             lambda i: bool(i.original and "REFINERY_EXPORT_KEY" in i.original["content"]))
        assert answer.original["flags"] & EPHEMERAL
        bad = await slash(world, "export", {"formats": "ratings,votes"}, owner,
                          lambda i: bool(i.original and "⚠️" in i.original["content"]))
        assert "Unknown export format `votes`" in bad.original["content"]
        assert not (app.config.data_dir / "exports").exists()
        assert await moderation_count(app) == 0


async def test_flag_and_unflag_by_slash(world: World, start_bot) -> None:
    """/flag and /unflag journal flag/unflag for moderators; others are refused and nothing is journaled."""
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        _, round_id = await make_round(world, app, world.alice, "a red fox")
        refused = await slash(world, "flag", {"round": round_id}, world.bob)
        assert "Only moderators can flag rounds" in refused.responses[0]["data"]["content"]
        flagged = await slash(world, "flag", {"round": round_id}, owner)
        assert f"Round `{round_id}` is flagged" in flagged.responses[0]["data"]["content"]
        unknown = await slash(world, "unflag", {"round": "nosuchround"}, owner)
        assert "not a round id" in unknown.responses[0]["data"]["content"]
        unflagged = await slash(world, "unflag", {"round": round_id}, owner)
        assert "no longer flagged" in unflagged.responses[0]["data"]["content"]
        assert all(i.responses[0]["data"]["flags"] & EPHEMERAL for i in (refused, flagged, unknown, unflagged))
        assert await moderation_count(app) == 2


async def test_out_of_range_moderator_input_is_refused_by_value(world: World, start_bot, monkeypatch) -> None:
    """`/export until:9999-12-31` and `/flag round:99999999999999999999999` get a private answer naming
    the value, not "Something went wrong"; nothing is written."""
    monkeypatch.setenv("REFINERY_EXPORT_KEY", KEY)
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        export = await slash(world, "export", {"until": "9999-12-31"}, owner,
                             lambda i: bool(i.original and "⚠️" in i.original["content"]))
        assert "until=9999-12-31 is out of range" in export.original["content"]
        flag = await slash(world, "flag", {"round": "99999999999999999999999"}, owner)
        assert "`99999999999999999999999` is not a round id" in flag.responses[0]["data"]["content"]
        assert (await app.journal.stats()).by_kind.get("errors") == 2, "both shown as expected errors"
        assert not (app.config.data_dir / "exports").exists() and await moderation_count(app) == 0


async def test_a_forgotten_user_is_named_nowhere_in_a_later_export(world: World, start_bot, monkeypatch) -> None:
    """After bob's /forget-me, alice's prompt that mentions him is exported with "@someone": his stable
    pseudonym appears in no file of the export."""
    from storage.pseudonyms import Pseudonymiser

    monkeypatch.setenv("REFINERY_EXPORT_KEY", KEY)
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        msg, round_id = await make_round(world, app, world.alice, f"a portrait of <@{world.bob}>")
        await world.server.add_reaction(world.imagine, msg, world.alice, ONE)
        await slash(world, "forget-me", {}, world.bob)

        async def settled() -> bool:
            return bool((await app.journal.vote_state(round_id)).get(1)) and await moderation_count(app) == 1
        await until(settled)
        await slash(world, "export", {"name": "later", "formats": "ratings"}, owner,
                    lambda i: bool(i.original and "📦" in i.original["content"]))
        folder = app.config.data_dir / "exports" / "later"
    prompts = {row["prompt"] for row in pq.read_table(folder / "ratings" / "train.parquet").to_pylist()}
    assert prompts == {"a portrait of @someone"}
    pseudonym = Pseudonymiser.from_secret(KEY).user(world.bob)
    for path in (p for p in folder.rglob("*") if p.is_file() and ".oxen" not in p.parts):
        text = str(pq.read_table(path).to_pylist()) if path.suffix == ".parquet" else path.read_bytes().decode(
            "utf-8", "replace")
        assert pseudonym not in text and str(world.bob) not in text, path


async def test_the_export_answer_names_the_export_and_commit_not_the_servers_path(world: World, start_bot,
                                                                                   monkeypatch) -> None:
    """The /export answer shows the export's name and its Oxen commit, never the server's absolute folder; an
    export no round matches is refused in words, with nothing written, journaled or committed; a key under
    16 bytes is refused naming REFINERY_EXPORT_KEY, never its value."""
    monkeypatch.setenv("REFINERY_EXPORT_KEY", KEY)
    owner = world.server.add_user("owner", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        msg, round_id = await make_round(world, app, world.alice, "a red fox")
        await world.server.add_reaction(world.imagine, msg, world.bob, TWO)
        await until(lambda: app.journal.has_vote(round_id, 2, world.bob))
        answer = await slash(world, "export", {"name": "weekly", "formats": "ratings"}, owner,
                             lambda i: bool(i.original and "📦" in i.original["content"]))
        text = answer.original["content"]
        data_dir = app.config.data_dir
        assert "Export **weekly**: 4 ratings from 1 round." in text, text
        assert re.search(r"commit `[0-9a-f]{16,}`", text), text
        assert str(data_dir.resolve()) not in text and str(data_dir) not in text, text

        empty = await slash(world, "export", {"name": "nothing", "channel": world.general}, owner,
                            lambda i: bool(i.original and "⚠️" in i.original["content"]))
        assert "Nothing to export: no round gave a row" in empty.original["content"], empty.original["content"]
        assert not (data_dir / "exports" / "nothing").exists()
        assert await moderation_count(app) == 1  # only the first export is journaled

        monkeypatch.setenv("REFINERY_EXPORT_KEY", "short-key")
        short = await slash(world, "export", {"name": "short"}, owner,
                            lambda i: bool(i.original and "⚠️" in i.original["content"]))
        assert "REFINERY_EXPORT_KEY is shorter than 16 bytes" in short.original["content"]
        assert "short-key" not in short.original["content"] and not (data_dir / "exports" / "short").exists()
