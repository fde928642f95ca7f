"""The conversation core's rules, against the shared fakes (tests/helpers.py): no discord.py, no diffusers,
no SQLite — each test runs in milliseconds. The end-to-end tests prove the wiring; these prove the rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.errors import InvalidInput, NotAllowed, Refused
from bot.options import PromptInput
from bot.permissions import Action, allowed
from bot.refinement import choose_candidate
from bot.tickets import Origin
from pipeline.jobs import JobState
from storage.records import ModerationAction
from tests.helpers import core_service, make_config, make_member, write_lora_file

ALICE, BOB, MOD = 11, 12, 13
ONE, TWO, NONE = "1️⃣", "2️⃣", "❌"


async def vote(core, message_id: int, user: int, emoji: str, added: bool = True):  # type: ignore[no-untyped-def]
    return await core.service.record_vote(message_id=message_id, user_id=user, emoji=emoji, added=added,
                                          channel_id=7, guild_id=None)


async def test_votes_and_retractions_are_journaled_once(tmp_path: Path) -> None:
    """An add, a repeated add (nothing), a retraction, "none is good" as candidate 0; other emoji and other
    messages are not votes."""
    async with core_service(tmp_path) as core:
        rnd = await core.posted_round(500)
        assert (await vote(core, 500, ALICE, ONE)).candidate == 1
        assert await vote(core, 500, ALICE, ONE) is None  # repeated: changes nothing, journals nothing
        assert (await vote(core, 500, ALICE, ONE, added=False)).action == "remove"
        assert (await vote(core, 500, BOB, NONE)).candidate == 0
        assert await vote(core, 500, BOB, "🎉") is None and await vote(core, 999, BOB, TWO) is None
        assert [(v.candidate, v.user_id, v.action) for v in core.journal.records("votes")] == [
            (1, ALICE, "add"), (1, ALICE, "remove"), (0, BOB, "add")]
        assert await core.journal.vote_state(rnd.round_id) == {0: {BOB}}


async def test_the_rate_limit_drops_new_votes_never_retractions_and_forgets_after_a_minute(tmp_path: Path) -> None:
    """Over `events_per_minute` new votes are dropped (and counted); a retraction always lands; a minute
    later the user may vote again."""
    async with core_service(tmp_path, moderation={"events_per_minute": 2}) as core:
        await core.posted_round(500)
        assert await vote(core, 500, ALICE, ONE) and await vote(core, 500, ALICE, TWO)
        assert await vote(core, 500, ALICE, "3️⃣") is None and core.service.dropped_events == 1
        assert (await vote(core, 500, ALICE, ONE, added=False)).action == "remove"  # never dropped
        core.clock.advance(61)
        assert (await vote(core, 500, ALICE, "3️⃣")).candidate == 3


async def test_an_opted_out_user_is_no_longer_logged(tmp_path: Path) -> None:
    """After /forget-me a user's votes are not journaled; others' still are."""
    async with core_service(tmp_path) as core:
        await core.posted_round(500)
        await core.service.moderation.forget_me(ALICE)
        assert await vote(core, 500, ALICE, ONE) is None
        assert await vote(core, 500, BOB, ONE) is not None


@pytest.mark.parametrize(("named", "mine", "totals", "expected"), [
    (3, {1}, {1: 5}, (3, "as you asked")),
    (None, {2}, {1: 5, 2: 1}, (2, "your vote")),
    (None, {1, 2}, {1: 1, 2: 3}, (2, "the most votes")),  # two own votes: the room decides
    (None, set(), {2: 2, 4: 2}, (2, "the most votes")),  # a tie: the lowest number
    (None, {0}, {0: 3}, (None, "no votes yet")),  # "none is good" is nobody's pick
])
def test_which_candidate_a_reply_refines(named: int | None, mine: set[int], totals: dict[int, int],
                                         expected: tuple[int | None, str]) -> None:
    """An explicit number wins; else the replier's single vote; else the top-voted, lowest on ties; else none."""
    assert choose_candidate(named, mine, totals) == expected


async def test_banned_phrases_are_refused_and_logged_without_the_phrase(tmp_path: Path) -> None:
    """A banned phrase in a prompt, disguised or not, is Refused and journaled as a refusal naming no phrase."""
    async with core_service(tmp_path, moderation={"banned_words": ["dragon"]}) as core:
        for prompt in ("a DRAGON at dawn", "a d.r.a.g.o.n", "a dr4g0n"):
            with pytest.raises(Refused):
                await core.service.checked_request(PromptInput(prompt=prompt), ALICE)
        request = await core.service.checked_request(PromptInput(prompt="a dragonfly"), ALICE)  # whole words
        assert request.prompt == "a dragonfly"
        refusals = core.journal.records("moderation")
        assert len(refusals) == 3 and all(r.reason == "banned phrase" and "dragon" not in r.reason for r in refusals)


def test_moderator_actions_follow_the_permission_table(tmp_path: Path) -> None:
    """Every moderator-only action: refused to a plain member, allowed by a listed role or Manage Server."""
    config = make_config(tmp_path, moderation={"moderator_roles": ["Mods"]})
    for action in Action:
        assert not allowed(action, make_member(1), config), action
        assert allowed(action, make_member(1, roles=["mods"]), config), action
        assert allowed(action, make_member(1, moderator=True), config), action


async def test_only_the_requester_or_a_moderator_cancels_and_a_moderator_is_on_the_record(tmp_path: Path) -> None:
    """Bob cannot cancel Alice's waiting job; Alice can cancel her own; a moderator's cancel is journaled."""
    async with core_service(tmp_path, moderation={"moderator_roles": ["Mods"]}) as core:
        core.generator.gate.clear()  # hold the generator: jobs stay in the queue
        request = await core.service.checked_request(PromptInput(prompt="a fox"), ALICE)
        first = await core.queue.submit(request, user_id=ALICE)
        second = await core.queue.submit(request, user_id=ALICE)
        with pytest.raises(NotAllowed):
            await core.service.cancel(member=make_member(BOB), job_id=second.job_id)
        with pytest.raises(InvalidInput, match="no job `nope`"):
            await core.service.cancel(member=make_member(BOB), job_id="nope")
        assert await core.service.cancel(member=make_member(ALICE), job_id=second.job_id) == [second.job_id]
        assert await core.service.cancel(member=make_member(MOD, roles=["Mods"]), job_id=first.job_id) == [
            first.job_id]
        core.generator.gate.set()
        with pytest.raises(Exception):  # noqa: B017 - cancelled jobs end with the queue's cancellation error
            await asyncio.wait_for(first.future, 5)
        assert core.queue.status(second).state is JobState.CANCELLED
        (action,) = core.journal.records("moderation")
        assert isinstance(action, ModerationAction) and (action.action, action.moderator_id,
                                                          action.target_user_id) == ("cancel", MOD, ALICE)


async def test_a_prompt_becomes_a_journaled_round_with_the_adapter_in_use(tmp_path: Path) -> None:
    """imagine: the queue runs the request, the round is journaled with its seeds; with an adapter in use the
    generator is asked for it and the round records it."""
    write_lora_file(tmp_path / "models" / "red")  # whole: /model use load-checks it (#23.5)
    async with core_service(tmp_path) as core:
        origin = Origin(ALICE, 7, None, "slash")

        async def show(status: object) -> None:
            return None
        request = await core.service.checked_request(PromptInput(prompt="a fox", seed=40), ALICE)
        plain = await core.service.imagine(request, origin, show)
        assert plain.round.seeds == (40, 41, 42, 43) and plain.round.adapter is None
        ref = await core.service.adapters.use(make_member(MOD, moderator=True), "red", 1.0)
        adapted = await core.service.imagine(request, origin, show)
        assert core.generator.requests[-1].adapter == ref and adapted.round.adapter == ref.label
        assert [r.round_id for r in core.journal.records("rounds")] == [plain.round.round_id, adapted.round.round_id]
