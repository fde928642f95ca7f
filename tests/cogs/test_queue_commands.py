"""`/queue` and `/cancel` through the real client: position, cancelling one's own and others' jobs."""

from __future__ import annotations

import asyncio
import threading

from bot.devserver import MANAGE_GUILD
from bot.permissions import Member
from pipeline.generator import BaseGenerator
from pipeline.requests import GenerationRequest, GenerationResult, ProgressCallback
from tests.conftest import World


class HeldGenerator(BaseGenerator):
    """A Generator the test can hold mid-job, so jobs stay queued and running while it looks."""

    model_id = "held"

    def __init__(self) -> None:
        self.release = threading.Event()

    def generate(self, request: GenerationRequest, progress: ProgressCallback | None = None) -> GenerationResult:
        for step in range(1, 1000):
            if self.release.wait(timeout=0.01):
                break
            if progress is not None:
                progress(min(step, request.steps), request.steps)
        raise RuntimeError("released without finishing")  # never needed: these jobs are cancelled


async def test_queue_shows_jobs_and_cancel_respects_ownership(world: World, start_bot) -> None:
    """/queue lists running and waiting jobs; a user cancels their own; only a moderator cancels others'."""
    moderator = world.server.add_user("mod", permissions=MANAGE_GUILD)
    generator = HeldGenerator()
    async with start_bot(generator=generator) as app:
        first = await world.server.invoke_slash("imagine", {"prompt": "first"}, user_id=world.alice,
                                                channel_id=world.imagine)
        second = await world.server.invoke_slash("imagine", {"prompt": "second"}, user_id=world.bob,
                                                 channel_id=world.imagine)
        await second.wait_for(lambda i: bool(i.original and "position 1" in i.original["content"]), timeout=10)
        shown = await world.server.invoke_slash("queue", {}, user_id=world.bob, channel_id=world.imagine)
        await shown.wait_for(lambda i: bool(i.responses))
        text = shown.responses[0]["data"]["content"]
        assert "running" in text and "#1" in text and "first" in text and "second" in text
        first_job = (await app.service.queue_view())[0].job_id

        refused = await world.server.invoke_slash("cancel", {"job": first_job}, user_id=world.bob,
                                                  channel_id=world.imagine)
        await refused.wait_for(lambda i: bool(i.responses))
        assert "Only the person who asked, or a moderator" in refused.responses[0]["data"]["content"]

        own = await world.server.invoke_slash("cancel", {}, user_id=world.bob, channel_id=world.imagine)
        await own.wait_for(lambda i: bool(i.responses))
        assert "Cancelled" in own.responses[0]["data"]["content"]
        await second.wait_for(lambda i: bool(i.original and "cancelled" in i.original["content"]), timeout=10)

        by_mod = await world.server.invoke_slash("cancel", {"job": first_job}, user_id=moderator,
                                                 channel_id=world.imagine)
        await by_mod.wait_for(lambda i: bool(i.responses))
        assert f"Cancelled `{first_job}`" in by_mod.responses[0]["data"]["content"]
        await first.wait_for(lambda i: bool(i.original and "cancelled" in i.original["content"]), timeout=10)
        assert (await app.service.queue_view()) == []
        logged = [(a.action, a.moderator_id, a.target_user_id) for a in await app.service.moderation.modlog(
            Member(moderator, manage_guild=True))]
        assert logged == [("cancel", moderator, world.alice)], "a moderator's cancel is on the record"
        generator.release.set()
        await asyncio.sleep(0)


async def test_cancel_button_under_the_acknowledgement(world: World, start_bot) -> None:
    """The 🛑 button under a waiting job's acknowledgement cancels it for its requester only."""
    generator = HeldGenerator()
    async with start_bot(generator=generator) as app:
        await world.server.invoke_slash("imagine", {"prompt": "first"}, user_id=world.alice, channel_id=world.imagine)
        second = await world.server.invoke_slash("imagine", {"prompt": "second"}, user_id=world.bob,
                                                 channel_id=world.imagine)
        await second.wait_for(lambda i: bool(i.original and i.original.get("components")), timeout=10)
        button = second.original["components"][0]["components"][0]
        assert button["custom_id"].startswith("rf:cancel:job-") and button["label"] == "Cancel"
        message_id = int(second.original["id"])

        stranger = await world.server.click_button(message_id, button["custom_id"], user_id=world.alice)
        await stranger.wait_for(lambda i: bool(i.responses))
        assert "Only the person who asked, or a moderator" in stranger.responses[0]["data"]["content"]
        assert len(await app.service.queue_view()) == 2

        owner = await world.server.click_button(message_id, button["custom_id"], user_id=world.bob)
        await owner.wait_for(lambda i: bool(i.responses))
        assert "Cancelled" in owner.responses[0]["data"]["content"]
        await second.wait_for(lambda i: bool(i.original and "cancelled" in i.original["content"]
                                             and not i.original.get("components")), timeout=10)
        for entry in (await app.service.queue_view()):
            await app.queue.cancel(entry.job_id)
        generator.release.set()


async def test_cancel_reaction_on_the_acknowledgement(world: World, start_bot) -> None:
    """❌ on a waiting job's acknowledgement cancels it for its requester or a moderator; a stranger's ❌
    changes nothing, and the acknowledgement tells how to cancel."""
    moderator = world.server.add_user("mod", permissions=MANAGE_GUILD)
    generator = HeldGenerator()
    async with start_bot(generator=generator) as app:
        first = await world.server.invoke_slash("imagine", {"prompt": "first"}, user_id=world.alice,
                                                channel_id=world.imagine)
        await first.wait_for(lambda i: bool(i.original and "generating" in i.original["content"]), timeout=10)
        replies = {}
        for prompt in ("second", "third"):
            await world.server.send_message(world.imagine, world.bob, prompt)
            replies[prompt] = await world.server.wait_for_message(
                lambda m, p=prompt: m["author"]["id"] == str(world.server.bot_user_id) and p in m["content"]
                and "position" in m["content"] and "react ❌ to cancel" in m["content"])
        second_id, third_id = int(replies["second"]["id"]), int(replies["third"]["id"])

        # The stranger's ❌ comes first; the moderator's, on the next job, is handled after it: once that
        # one shows "cancelled", the stranger's has been handled too (no fixed sleep).
        await world.server.add_reaction(world.imagine, second_id, world.alice, "❌")  # not hers
        await world.server.add_reaction(world.imagine, third_id, moderator, "❌")
        await world.server.wait_for_message(lambda m: m["id"] == str(third_id) and "cancelled" in m["content"])
        assert [e.prompt for e in await app.service.queue_view()] == ["first", "second"]

        await world.server.add_reaction(world.imagine, second_id, world.bob, "❌")
        await world.server.wait_for_message(lambda m: m["id"] == str(second_id) and "cancelled" in m["content"])
        first_id = int(first.original["id"])
        await world.server.add_reaction(world.imagine, first_id, world.alice, "❌")  # running: stops at a step
        await first.wait_for(lambda i: bool(i.original and "cancelled" in i.original["content"]), timeout=10)
        assert await app.service.queue_view() == []
        generator.release.set()


async def test_acknowledged_jobs_survive_a_restart_of_the_in_process_queue(world: World, start_bot) -> None:
    """The running and the waiting job of a bot that stops are kept on disk; the restarted bot makes
    them and answers each on its acknowledgement, which said in between that the job was kept."""
    async with start_bot(generator=HeldGenerator()):
        running = await world.server.invoke_slash("imagine", {"prompt": "a red barn", "seed": 3},
                                                  user_id=world.alice, channel_id=world.imagine)
        await running.wait_for(lambda i: bool(i.original and "generating" in i.original["content"]), timeout=10)
        await world.server.send_message(world.imagine, world.bob, "a blue barn")
        waiting = await world.server.wait_for_message(
            lambda m: m["author"]["id"] == str(world.server.bot_user_id) and "position 1" in m["content"])
    assert "stays in the queue" in running.original["content"]
    assert "stays in the queue" in world.server.channel_messages(world.imagine)[-1]["content"]

    async with start_bot() as app:
        await running.wait_for(lambda i: bool(i.original and len(i.original["attachments"]) == 4), timeout=60)
        answered = await world.server.wait_for_message(lambda m: m["id"] == waiting["id"]
                                                       and len(m["attachments"]) == 4, timeout=60)
        for message_id in (running.original["id"], answered["id"]):
            await world.server.wait_for_request(lambda r, m=message_id: r.method == "PUT" and "4️⃣" in r.path
                                                and m in r.path)
        first = await app.journal.round_for_message(int(running.original["id"]))
        second = await app.journal.round_for_message(int(answered["id"]))
        assert first is not None
        assert (first.prompt, first.seeds[0], first.requester_id) == ("a red barn", 3, world.alice)
        assert second is not None and (second.prompt, second.requester_id, second.source) == (
            "a blue barn", world.bob, "message")
        assert await app.queue.pending_jobs() == []


async def test_queue_shows_other_channels_jobs_only_as_places_in_line(world: World, start_bot) -> None:
    """/queue shows a member their channel's jobs and their own; a job from another (here NSFW) channel
    is "a job in another channel", without prompt or requester; a moderator sees everything."""
    moderator = world.server.add_user("mod", permissions=MANAGE_GUILD)
    spicy = world.server.add_channel("spicy", nsfw=True)
    generator = HeldGenerator()
    async with start_bot(generator=generator) as app:
        held = await world.server.invoke_slash("imagine", {"prompt": "a secret garden"}, user_id=world.alice,
                                               channel_id=spicy)
        await held.wait_for(lambda i: bool(i.original and "generating" in i.original["content"]), timeout=10)
        mine = await world.server.invoke_slash("imagine", {"prompt": "a blue barn"}, user_id=world.bob,
                                               channel_id=world.general)
        await mine.wait_for(lambda i: bool(i.original and "position 1" in i.original["content"]), timeout=10)

        async def queue_as(user: int, channel: int) -> str:
            shown = await world.server.invoke_slash("queue", {}, user_id=user, channel_id=channel)
            await shown.wait_for(lambda i: bool(i.responses))
            return shown.responses[0]["data"]["content"]

        member_view = await queue_as(world.bob, world.imagine)
        assert "a blue barn" in member_view, "their own job, asked elsewhere"
        assert "secret" not in member_view and f"<@{world.alice}>" not in member_view
        assert "a job in another channel — running" in member_view
        assert "secret garden" in await queue_as(world.alice, spicy)
        everything = await queue_as(moderator, world.imagine)
        assert "secret garden" in everything and "a blue barn" in everything
        for entry in await app.service.queue_view():
            await app.queue.cancel(entry.job_id)
        generator.release.set()
