"""NSFW policy per channel: NSFW prompts are sent as spoilers (or refused) outside NSFW channels."""

from __future__ import annotations

import pytest

from bot.devserver import MANAGE_GUILD
from bot.permissions import Member
from pipeline.tiny import build_tiny_safety_checker
from tests.conftest import World

NSFW = {"moderation": {"nsfw_words": ["nude"]}}


async def slash(world: World, prompt: str, channel: int):
    interaction = await world.server.invoke_slash("imagine", {"prompt": prompt}, user_id=world.alice,
                                                  channel_id=channel)
    await interaction.wait_for(lambda i: bool(i.original and (len(i.original["attachments"]) == 4
                                                              or "⚠️" in i.original["content"])), timeout=60)
    return interaction.original


async def test_spoilers_outside_nsfw_channels_only(world: World, start_bot) -> None:
    """An NSFW prompt gets spoiler attachments in a normal channel, plain ones in an NSFW channel;
    other prompts are never spoilered."""
    adults = world.server.add_channel("adults", nsfw=True)
    async with start_bot(NSFW):
        outside = await slash(world, "a NÜDE statue", world.imagine)
        inside = await slash(world, "a nude statue", adults)
        clean = await slash(world, "a bronze statue", world.imagine)
    assert all(a["filename"].startswith("SPOILER_") for a in outside["attachments"])
    assert not any(a["filename"].startswith("SPOILER_") for a in inside["attachments"] + clean["attachments"])


async def test_refuse_policy_refuses_and_logs(world: World, start_bot) -> None:
    """With nsfw_action = "refuse", the prompt is refused outside NSFW channels and a refusal is journaled."""
    async with start_bot({"moderation": {"nsfw_words": ["nude"], "nsfw_action": "refuse"}}) as app:
        answer = await slash(world, "a nude statue", world.imagine)
        assert "only allowed in channels marked NSFW" in answer["content"] and answer["attachments"] == []
        stats = await app.journal.stats()
        assert stats.by_kind.get("rounds", 0) == 0 and stats.by_kind.get("moderation") == 1


@pytest.fixture(scope="module")
def flag_everything(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny safety checker that flags every image (so a random tiny model's output is "unsafe")."""
    return str(build_tiny_safety_checker(tmp_path_factory.mktemp("safety") / "all", flags="all"))


async def test_safety_checker_flags_images_into_spoilers_and_the_log(world: World, start_bot,
                                                                      flag_everything: str) -> None:
    """Images the safety checker flags go as spoilers outside NSFW channels and plainly inside them;
    either way the round is flagged in the log (so exports leave it out unless asked)."""
    adults = world.server.add_channel("adults", nsfw=True)
    async with start_bot({"moderation": {"safety_checker": flag_everything}}) as app:
        outside = await slash(world, "a bronze statue", world.imagine)
        inside = await slash(world, "a bronze statue", adults)
        actions = await app.service.moderation.modlog(Member(world.alice, frozenset(), frozenset(), manage_guild=True))
    assert all(a["filename"].startswith("SPOILER_") for a in outside["attachments"])
    assert len(inside["attachments"]) == 4
    assert not any(a["filename"].startswith("SPOILER_") for a in inside["attachments"])
    assert sorted((a.action, a.reason) for a in actions) == [("flag", "safety checker flagged #1, #2, #3, #4")] * 2


async def test_safety_checker_refuse_withholds_and_removes_the_round(world: World, start_bot,
                                                                       flag_everything: str) -> None:
    """Under nsfw_action = "refuse", flagged images are not posted outside NSFW channels; the round is
    kept in the log for audit but removed."""
    async with start_bot({"moderation": {"safety_checker": flag_everything, "nsfw_action": "refuse"}}) as app:
        answer = await slash(world, "a bronze statue", world.imagine)
        assert "safety checker flagged these images" in answer["content"] and answer["attachments"] == []
        actions = await app.service.moderation.modlog(Member(world.alice, frozenset(), frozenset(), manage_guild=True))
        stats = await app.journal.stats()
        assert app.queue.store is not None and app.queue.store.pending() == [], "withheld for good: not re-run"
    assert sorted(a.action for a in actions) == ["flag", "remove"]
    assert stats.by_kind.get("rounds") == 1, "the withheld round is kept for audit"


async def test_buttons_are_screened_against_phrases_banned_later(world: World, start_bot) -> None:
    """A round made before a phrase was banned cannot be rerolled after: the button refuses."""
    moderator = world.server.add_user("mod", permissions=MANAGE_GUILD)
    async with start_bot() as app:
        made = await slash(world, "a purple zeppelin", world.imagine)
        await world.server.wait_for_request(lambda r: r.method == "PUT" and "4️⃣" in r.path and made["id"] in r.path)
        banned = await world.server.invoke_slash("banned add", {"phrase": "zeppelin"}, user_id=moderator,
                                                 channel_id=world.imagine)
        await banned.wait_for(lambda i: bool(i.responses))
        reroll = next(c["custom_id"] for row in made["components"] for c in row["components"]
                      if c["custom_id"].startswith("rf:reroll:"))
        pressed = await world.server.click_button(int(made["id"]), reroll, user_id=world.bob)
        await pressed.wait_for(lambda i: bool(i.responses))
        assert "refused by this server's rules" in pressed.responses[0]["data"]["content"]
        assert (await app.journal.stats()).by_kind.get("rounds") == 1, "nothing was generated"
