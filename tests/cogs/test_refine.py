"""Refinement end to end: replies and buttons on a round make child rounds through real tiny pipelines."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.masks import ClipSegMasker
from tests.conftest import TinyModels, World
from tests.oxen_reader import committed_rows


@pytest.fixture
def refine_models(tiny_models: TinyModels) -> dict[str, dict[str, Any]]:
    return {"model": {"instruct_model": str(tiny_models.instruct), "inpaint_model": str(tiny_models.inpaint),
                      "clipseg_model": str(tiny_models.clipseg)}}


async def make_round(world: World, prompt: str = "a house by a lake", seed: int = 100) -> dict[str, Any]:
    interaction = await world.server.invoke_slash("imagine", {"prompt": prompt, "seed": seed},
                                                  user_id=world.alice, channel_id=world.imagine)
    await interaction.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)
    await posted(world, interaction.original)
    return interaction.original


async def reply_and_wait(world: World, parent: dict[str, Any], user: int, text: str,
                         attachments: list[tuple[str, bytes, str]] | None = None) -> dict[str, Any]:
    sent = await world.server.send_message(world.imagine, user, text, reply_to=int(parent["id"]),
                                           attachments=attachments)
    answer = await world.server.wait_for_message(
        lambda m: m.get("message_reference", {}).get("message_id") == sent["id"]
        and (len(m["attachments"]) == 4 or "⚠️" in m["content"]), timeout=60)
    if answer["attachments"]:
        await posted(world, answer)
    return answer


async def posted(world: World, message: dict[str, Any]) -> None:
    """The bot seeds the vote emoji after it has journaled which message shows the round."""
    await world.server.wait_for_request(lambda r: r.method == "PUT" and "4️⃣" in r.path
                                        and str(message["id"]) in r.path)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def child_of(app: Any, message: dict[str, Any]):
    return await app.service.round_for_message(int(message["id"]))


async def test_conditioning_reply_refines_the_named_candidate(world: World, start_bot, refine_models) -> None:
    """`2: in watercolor` → img2img from candidate 2 with a composed prompt and its seed, linked to the parent."""
    async with start_bot(refine_models) as app:
        parent = await make_round(world)
        answer = await reply_and_wait(world, parent, world.bob, "2: in watercolor")
        assert len(answer["attachments"]) == 4
        child = await child_of(app, answer)
        parent_round = await child_of(app, parent)
        assert (child.mode, child.parent_round_id, child.parent_candidate) == ("img2img", parent_round.round_id, 2)
        assert child.prompt == "a house by a lake, in watercolor"
        assert child.seeds[0] == parent_round.seeds[1]
        assert f"↳ refined from round `{parent_round.round_id}` #2: '2: in watercolor'" not in answer["content"]
        assert f"↳ refined from round `{parent_round.round_id}` #2" in answer["content"]
        assert "refining #2" in answer["content"]


async def test_instruction_edit_uses_the_repliers_own_vote(world: World, start_bot, refine_models) -> None:
    """`make it night` with one vote of the replier's own on #3 → InstructPix2Pix from #3."""
    async with start_bot(refine_models) as app:
        parent = await make_round(world)
        await world.server.add_reaction(world.imagine, int(parent["id"]), world.bob, "3️⃣")
        await world.server.add_reaction(world.imagine, int(parent["id"]), world.alice, "1️⃣")
        answer = await reply_and_wait(world, parent, world.bob, "make it night")
        child = await child_of(app, answer)
        assert (child.mode, child.parent_candidate) == ("instruct", 3)
        assert "refining #3 (your vote)" in answer["content"]


async def test_inpainting_a_region_named_in_words(world: World, start_bot, refine_models,
                                                   tiny_models: TinyModels) -> None:
    """`replace the sky with a sunset` → top-voted candidate, CLIPSeg mask saved, 9-channel inpainting."""
    carol, dave = world.server.add_user("carol"), world.server.add_user("dave")
    async with start_bot(refine_models) as app:
        parent = await make_round(world)
        for user, emoji in ((world.alice, "4️⃣"), (world.bob, "4️⃣"), (carol, "2️⃣")):
            await world.server.add_reaction(world.imagine, int(parent["id"]), user, emoji)
        answer = await reply_and_wait(world, parent, dave, "replace the sky with a sunset")
        child = await child_of(app, answer)
        parent_round = await child_of(app, parent)
        assert (child.mode, child.parent_candidate, child.prompt) == ("inpaint", 4, "a sunset")
        assert "inpainting 'the sky'" in answer["content"] and "the most votes" in answer["content"]
        saved = Image.open(app.config.data_dir / child.mask_path)
        source = (app.config.data_dir / parent_round.image_paths[3]).read_bytes()
        expected = Image.open(io.BytesIO(ClipSegMasker(str(tiny_models.clipseg)).mask_for(source, "the sky")))
        assert saved.size == (64, 64) and list(saved.getdata()) == list(expected.getdata())
        assert 0 < sum(1 for p in saved.getdata() if p > 127) < 64 * 64


async def test_attached_mask_is_used_and_bad_attachments_refused(world: World, start_bot, refine_models) -> None:
    """An attached image (any size) is the mask; a non-image gets a clear reply and nothing is generated."""
    async with start_bot(refine_models) as app:
        parent = await make_round(world)
        left = Image.new("L", (32, 32), 0)
        left.paste(255, (0, 0, 16, 32))
        answer = await reply_and_wait(world, parent, world.bob, "1: a stone wall",
                                      [("mask.png", png(left), "image/png")])
        child = await child_of(app, answer)
        assert (child.mode, child.parent_candidate) == ("inpaint", 1)
        mask = Image.open(app.config.data_dir / child.mask_path)
        assert mask.size == (64, 64)
        assert mask.getpixel((5, 30)) == 255 and mask.getpixel((60, 30)) == 0
        rounds_before = (await app.journal.stats()).by_kind.get("rounds", 0)
        bad = await reply_and_wait(world, parent, world.bob, "1: a stone wall",
                                   [("mask.png", b"this is not a picture", "image/png")])
        assert "not an image I can read" in bad["content"] and bad["attachments"] == []
        assert (await app.journal.stats()).by_kind.get("rounds", 0) == rounds_before


async def test_remix_without_votes_keeps_the_parents_seeds(world: World, start_bot, refine_models) -> None:
    """No number and no votes: the instruction changes the prompt of all four, on the parent's seeds."""
    async with start_bot(refine_models) as app:
        parent = await make_round(world)
        answer = await reply_and_wait(world, parent, world.bob, "more vibrant")
        child, parent_round = await child_of(app, answer), await child_of(app, parent)
        assert (child.mode, child.parent_candidate) == ("text2img", None)
        assert child.seeds == parent_round.seeds and child.prompt == "a house by a lake, more vibrant"
        assert "remixing all four" in answer["content"]


async def test_bad_reply_gets_a_clear_answer(world: World, start_bot, refine_models) -> None:
    """A candidate number out of range is refused with the range named."""
    async with start_bot(refine_models):
        parent = await make_round(world)
        answer = await reply_and_wait(world, parent, world.bob, "7: make it red")
        assert "7" in answer["content"] and "1 to 4" in answer["content"] and answer["attachments"] == []


async def test_buttons_make_child_rounds_even_after_a_restart(world: World, start_bot, refine_models,
                                                              tmp_path: Path) -> None:
    """V2, U1 and 🔁 each make a new child round; the buttons still work after the bot restarts, and the
    lineage reaches the Oxen log."""
    data_dir = tmp_path / "data"
    async with start_bot(refine_models, data_dir=data_dir) as app:
        parent = await make_round(world)
        parent_round = await child_of(app, parent)
        ids = [c["custom_id"] for row in parent["components"] for c in row["components"]]
        rid = parent_round.round_id
        assert ids == [f"rf:reroll:{rid}", *[f"rf:variation:{rid}:{k}" for k in range(1, 5)],
                       *[f"rf:upscale:{rid}:{k}" for k in range(1, 5)]]
    async with start_bot(refine_models, data_dir=data_dir, start_writer=True) as app:
        results = {}
        for custom_id in (f"rf:variation:{rid}:2", f"rf:upscale:{rid}:1", f"rf:reroll:{rid}"):
            click = await world.server.click_button(int(parent["id"]), custom_id, user_id=world.bob)
            await click.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)
            await posted(world, click.original)
            results[custom_id.split(":")[1]] = await child_of(app, click.original)
        variation, upscale, reroll = results["variation"], results["upscale"], results["reroll"]
        assert (variation.mode, variation.parent_candidate, variation.strength) == ("img2img", 2, 0.35)
        assert variation.seeds != parent_round.seeds
        assert (upscale.width, upscale.height, upscale.parent_candidate) == (128, 128, 1)
        assert upscale.seeds[0] == parent_round.seeds[0]
        assert reroll.mode == "text2img" and reroll.seeds != parent_round.seeds
        assert {r.parent_round_id for r in results.values()} == {rid}
        assert await asyncio.to_thread(app.writer.flush, 60)
    tables = committed_rows(data_dir / "oxen")["tables"]
    children = {r["round_id"]: r for r in tables["rounds"] if r["parent_round_id"] == rid}
    assert set(children) == {r.round_id for r in results.values()}
    assert {r["parent_round_id"] for r in tables["refinements"]} == {rid}
    assert sorted(r["instruction"] for r in tables["refinements"]) == ["reroll", "upscale", "variation"]


async def test_buttons_for_the_requester_only_refuse_others(world: World, start_bot, refine_models) -> None:
    """With `refine.buttons_for = "requester"`, someone else's click gets a private refusal and no round."""
    async with start_bot(refine_models | {"refine": {"buttons_for": "requester"}}) as app:
        parent = await make_round(world)  # asked for by alice
        rid = (await child_of(app, parent)).round_id
        click = await world.server.click_button(int(parent["id"]), f"rf:reroll:{rid}", user_id=world.bob)
        await click.wait_for(lambda i: bool(i.responses))
        response = click.responses[0]
        assert response["type"] == 4 and response["data"]["flags"] & 64
        assert "Only the person who asked for this round" in response["data"]["content"]
        own = await world.server.click_button(int(parent["id"]), f"rf:reroll:{rid}", user_id=world.alice)
        await own.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)


async def test_a_reply_padded_with_invisible_characters_is_answered(world: World, start_bot) -> None:
    """`more` + 490 zero-width spaces: acknowledged within Discord's 2,000 characters, then refined."""
    async with start_bot() as app:
        parent = await make_round(world)
        answer = await reply_and_wait(world, parent, world.bob, "more " + "\u200b" * 490)
        assert len(answer["attachments"]) == 4 and "remixing all four with 'more'" in answer["content"]
        assert (await child_of(app, answer)).parent_round_id is not None


async def test_an_attached_mask_without_a_target_asks_which_candidate(world: World, start_bot, refine_models) -> None:
    """No number and no votes: an attached mask is not dropped into a remix; the answer asks which one."""
    async with start_bot(refine_models) as app:
        parent = await make_round(world)
        rounds_before = (await app.journal.stats()).by_kind.get("rounds", 0)
        mask = Image.new("L", (16, 16), 255)
        answer = await reply_and_wait(world, parent, world.bob, "a stone wall", [("mask.png", png(mask), "image/png")])
        assert "Which candidate is the attached mask for" in answer["content"] and "1 to 4" in answer["content"]
        assert answer["attachments"] == []
        assert (await app.journal.stats()).by_kind.get("rounds", 0) == rounds_before
