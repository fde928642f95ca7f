"""The conversation core: submit a prompt, record a vote, apply a refinement, moderate and export.

No discord and no oxen here. Cogs call in with plain values and render what comes back; the queue
makes images; the journal is the point of acknowledgement (nothing is confirmed to a user before it
is durable there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from bot.adapters import AdapterDesk
from bot.config import Config
from bot.discord_limits import shown
from bot.emoji import match_emoji
from bot.errors import (
    GenerationFailed,
    Interrupted,
    InvalidInput,
    JobCancelled,
    LimitReached,
    NotAllowed,
    NotARound,
    Refused,
    user_message,
)
from bot.moderation import Moderation
from bot.options import PromptInput, build_request
from bot.permissions import Action, Member, allowed, is_moderator
from bot.ratelimit import EventRateLimit
from bot.refinement import Refinement, attached_mask, button_refinement, choose_candidate, refinement_for_plan
from bot.tickets import Origin, Ticket
from bot.vote_reconcile import VoteReconciler
from pipeline.adapters import AdapterUnavailable
from pipeline.jobs import Job, JobListing, JobQueue, JobStatus, QueueClosed, QueueLimitError
from pipeline.planner import PlanError, plan_refinement
from pipeline.requests import GenerationCancelled, GenerationRequest, GenerationResult, Mode
from storage.async_journal import EventLog
from storage.images import ImageStore
from storage.records import (
    ModerationAction,
    RefinementRequest,
    Round,
    RoundPosted,
    UserError,
    VoteEvent,
    new_id,
)

log = logging.getLogger(__name__)

# (image PNG, region phrase) → mask PNG, white = repaint; blocking, run on the GPU worker thread.
Masker = Callable[[bytes, str], bytes]

# The cog's way of showing a job's status to the user (edits the acknowledgement message).
StatusSink = Callable[[JobStatus], Awaitable[None]]


@dataclass(frozen=True)
class FinishedRound:
    round: Round
    images: tuple[bytes, ...]
    spoiler: bool = False  # an NSFW prompt outside an NSFW channel, under nsfw_action = "spoiler"
    job_id: str = ""  # the queue keeps the job until the round is posted (round_posted)


@dataclass(frozen=True)
class QueueLine:
    """A `/queue` line as its viewer may see it: `job` is None for a job asked in a channel they are
    not looking at (its prompt may come from an NSFW channel), so only its place in line shows."""

    status: JobStatus
    waited_s: float
    job: JobListing | None


@dataclass(frozen=True)
class VoteOutcome:
    round_id: str
    candidate: int  # 1-based, 0 = "none is good"
    action: str


class RefineryService:
    def __init__(self, config: Config, journal: EventLog, queue: JobQueue, images: ImageStore,
                 *, masker: Masker | None = None, has_instruct_model: bool = False,
                 clock: Callable[[], float] = time.monotonic, export_key: str | None = None,
                 owner: str = "") -> None:
        self.config = config
        self.owner = owner  # stamped on tickets: a restart resumes only this installation's jobs
        self.masker = masker
        self.has_instruct_model = has_instruct_model
        self.journal = journal
        self.queue = queue
        self.images = images
        # export_key: None reads REFINERY_EXPORT_KEY when an export runs (the demo and tests pass one)
        self.moderation = Moderation(config, journal, export_key=export_key)
        self.adapters = AdapterDesk(config, journal, self.moderation.require)  # /model and /arena
        # votes cast or retracted while the bot was away (cogs/vote_reconcile.py reads Discord for it)
        self.reconciler = VoteReconciler(config, journal, self.moderation.opted_out, self.candidate_for_emoji)
        self.rate_limit = EventRateLimit(config.moderation.events_per_minute, clock)
        self._acks: dict[int, str] = {}  # acknowledgement message id → its job, while the job is open

    async def load(self) -> None:
        """Start-up: replay the journaled /banned changes and opt-outs before the first event arrives."""
        await self.moderation.word_filter()
        await self.moderation.opted_out()
        await self.adapters.load()

    @property
    def dropped_events(self) -> int:
        """Reactions and replies dropped by the per-user rate limit since start-up."""
        return self.rate_limit.dropped

    def accept_event(self, user_id: int) -> bool:
        """False when the user is over `moderation.events_per_minute`: drop the event silently."""
        return self.rate_limit.allow(user_id)

    # --- prompts -------------------------------------------------------------------------------

    async def checked_request(self, given: PromptInput, user_id: int) -> GenerationRequest:
        """Validate a prompt and its options (InvalidInput names the bad value), then check the prompt
        and negative prompt against the banned phrases (Refused)."""
        request = build_request(given, self.config.generation)
        await self.moderation.screen(user_id, request.prompt, request.negative_prompt)
        return request

    async def imagine(self, request: GenerationRequest, origin: Origin, show: StatusSink,
                      refinement: Refinement | None = None, *, ack_message_id: int = 0,
                      note: str | None = None) -> FinishedRound:
        """Queue a request, keep the user informed, and journal the finished round (with its lineage).

        `ack_message_id` is the acknowledgement that will become the round: it goes into the job's
        ticket, so a bot restarted while the job waits in Redis answers there (`pending_answers`)."""
        spoiler = await self.moderation.nsfw_policy(request, origin.user_id, origin.nsfw_channel)
        request = self.adapters.apply(request, origin.source)  # the adapter in use, or an arena draw
        lineage: dict[str, object] = {}
        if refinement is not None:
            lineage = {"parent_round_id": refinement.parent.round_id, "parent_candidate": refinement.candidate,
                       "instruction": refinement.plan.instruction, "plan": refinement.plan_json}
        ticket = Ticket(origin, ack_message_id, self.owner, note, spoiler, lineage)
        try:
            job = await self.queue.submit(request, user_id=origin.user_id, meta=ticket.to_dict())
        except QueueLimitError as exc:
            raise LimitReached(str(exc), exc.retry_after_s) from None
        except QueueClosed:
            raise Interrupted("I am restarting and could not take this; please send it again in a minute.") from None
        return await self.complete(job, ticket, show)

    async def complete(self, job: Job, ticket: Ticket, show: StatusSink) -> FinishedRound:
        """Wait for a submitted (or resumed) job, save its images and journal its round."""
        if ticket.ack_message_id:
            self._acks[ticket.ack_message_id] = job.job_id
        try:
            result = await self._wait(job, show)
        finally:
            self._acks.pop(ticket.ack_message_id, None)
        request, origin = job.request, ticket.origin
        started = job.started_at if job.started_at is not None else job.submitted_at
        round_id = new_id()
        paths = await asyncio.to_thread(self.images.save_round, round_id, result.images)
        mask_path = None
        if ticket.lineage and request.mask_image is not None:
            mask_path = await asyncio.to_thread(self.images.save, round_id, "mask.png", request.mask_image)
        record = ticket.round_record(round_id, request, result, paths, mask_path=mask_path,
                                     queued_s=max(0.0, started - job.submitted_at))
        await self.journal.append(record)
        log.info("round %s done for user %s (%s, %.2fs)", round_id, origin.user_id, job.job_id,
                 result.elapsed_s)
        try:
            flagged = await self.moderation.image_policy(record, result.nsfw, origin.nsfw_channel)
        except Refused:
            await self._forget(job.job_id)  # withheld for good: nothing is left to answer
            raise
        return FinishedRound(record, result.images, ticket.spoiler or flagged, job.job_id)

    async def _forget(self, job_id: str) -> None:
        try:
            await self.queue.forget(job_id)
        except Exception:  # it would be answered again after a restart: a duplicate, never a loss
            log.exception("could not mark %s answered in the queue", job_id)

    async def pending_answers(self) -> list[tuple[Job, Ticket]]:
        """Start-up: jobs an earlier run of the bot acknowledged but never answered (they waited or ran
        in Redis meanwhile), re-attached so that `complete` answers each on its acknowledgement."""
        found = []
        for pending in await self.queue.pending_jobs():
            try:
                ticket = Ticket.from_dict(pending.meta)
            except (KeyError, TypeError, ValueError):
                log.warning("pending job %s carries no ticket; left alone", pending.job_id)
                continue
            if ticket.owner != self.owner:
                continue  # another bot sharing this queue answers it
            try:
                job = await self.queue.resume(pending.job_id)
            except KeyError:
                continue  # expired between the two reads
            found.append((job, ticket))
        if found:
            log.info("re-attached to %d job(s) from before the restart", len(found))
        return found

    async def _wait(self, job: Job, show: StatusSink) -> GenerationResult:
        """Await the job, showing its status at most once per `progress_interval_s`, when it changed."""
        interval = max(self.config.generation.progress_interval_s, 0.05)
        shown: JobStatus | None = None
        while True:
            status = self.queue.status(job)
            if status != shown and not job.finished:  # a finished job's answer replaces the status
                shown = status
                with contextlib.suppress(Exception):  # a failed edit must not fail the job
                    await show(status)
            try:
                return await asyncio.wait_for(asyncio.shield(job.future), timeout=interval)
            except TimeoutError:
                continue
            except GenerationCancelled:
                raise JobCancelled("The job was cancelled.") from None
            except QueueClosed as exc:
                if exc.kept:
                    raise Interrupted("I am restarting. Your job stays in the queue; I will post the "
                                      "images here when I am back.") from None
                raise Interrupted("I had to shut down before your job ran; please send it again in a "
                                  "minute.") from None
            except AdapterUnavailable as exc:  # the user should read why (from either queue)
                raise GenerationFailed(f"Generation failed ({job.job_id}): {exc}") from exc
            except Exception as exc:
                raise GenerationFailed(f"Generation failed ({job.job_id}); the error was logged. "
                                       "Please try again.") from exc

    async def round_posted(self, round_id: str, message_id: int, channel_id: int,
                           guild_id: int | None, job_id: str = "") -> None:
        """Remember which message shows a round, so votes, replies and buttons find it later; the
        job is answered now, so its queue stops keeping it (until now a crash re-answers it)."""
        await self.journal.append(RoundPosted(round_id=round_id, message_id=message_id,
                                              channel_id=channel_id, guild_id=guild_id))
        if job_id:
            await self._forget(job_id)

    # --- the queue -----------------------------------------------------------------------------

    async def queue_view(self) -> list[JobListing]:
        """Running and waiting jobs of every bot process, in the order they will run."""
        return await self._listing()

    async def _listing(self) -> list[JobListing]:
        try:
            return await self.queue.listing()
        except QueueLimitError as exc:  # Redis unreachable: the user hears so, not "something went wrong"
            raise LimitReached(str(exc), exc.retry_after_s) from None

    async def queue_for(self, member: Member, channel_id: int) -> list[QueueLine]:
        """`/queue` for one member in one channel: moderators see every job; others see the jobs asked
        in this channel and their own, and every other job only as a place in line."""
        everything = is_moderator(member, self.config)
        lines = []
        for entry in await self._listing():
            try:
                asked_in = Ticket.from_dict(entry.meta).origin.channel_id
            except (KeyError, TypeError, ValueError):
                asked_in = None  # no ticket: nobody but a moderator can tell where it came from
            shown = everything or entry.user_id == member.user_id or asked_in == channel_id
            lines.append(QueueLine(entry.status, entry.waited_s, entry if shown else None))
        return lines

    async def cancel(self, *, member: Member, job_id: str | None = None) -> list[str]:
        """Cancel one job (by id) or all of the member's jobs; returns the ids cancelled."""
        user_id = member.user_id
        may_cancel_others = allowed(Action.CANCEL_OTHERS, member, self.config)
        jobs = [job for job in await self._listing() if job_id is None or job.job_id == job_id]
        if job_id is not None and not jobs:
            raise InvalidInput(f"There is no job `{job_id}` in the queue (it may have finished).")
        if job_id is None:
            jobs = [job for job in jobs if job.user_id == user_id]
        elif jobs[0].user_id != user_id and not may_cancel_others:
            raise NotAllowed("Only the person who asked, or a moderator, can cancel that job.")
        try:
            cancelled = [job for job in jobs if await self.queue.cancel(job.job_id)]
        except QueueLimitError as exc:  # Redis unreachable: say so, rather than "nothing to cancel"
            raise LimitReached(str(exc), exc.retry_after_s) from None
        for job in cancelled:
            if job.user_id != user_id:  # a moderator stopping someone's job: on the record, in /modlog
                await self.journal.append(ModerationAction(
                    event_id=new_id(), action="cancel", moderator_id=user_id, round_id=None,
                    target_user_id=job.user_id, reason=f"{job.job_id}: {job.prompt[:100]}"))
        log.info("user %s cancelled %s", user_id, [job.job_id for job in cancelled] or "nothing")
        return [job.job_id for job in cancelled]

    async def cancel_by_reaction(self, member: Member, message_id: int, emoji: str) -> list[str]:
        """`queue.cancel_emoji` on an acknowledgement cancels its job, for its requester or a moderator;
        anything else (another emoji, a finished job, someone else's job) changes nothing."""
        job_id = self._acks.get(message_id)
        if emoji != self.config.queue.cancel_emoji or job_id is None:
            return []
        try:
            return await self.cancel(member=member, job_id=job_id)
        except (InvalidInput, NotAllowed):
            return []  # a reaction has no private answer; the job simply goes on

    # --- refinements ---------------------------------------------------------------------------

    async def plan_reply(self, *, message_id: int, text: str, user_id: int,
                         mask_attachment: bytes | None = None) -> Refinement:
        """Decide what a reply to a round asks for (raises InvalidInput / NotARound with the reason)."""
        parent = await self.round_for_message(message_id)
        # The child's prompt carries the parent's, which must still pass phrases banned since.
        await self.moderation.screen(user_id, text, parent.prompt, parent.negative_prompt)
        try:
            plan = plan_refinement(text, parent.prompt, candidates=len(parent.seeds),
                                   max_length=self.config.generation.max_prompt_length,
                                   instruction_weight=self.config.refine.instruction_weight)
        except PlanError as exc:
            raise InvalidInput(str(exc)) from None
        state = await self.journal.vote_state(parent.round_id)
        mine = {k for k, users in state.items() if user_id in users}
        candidate, why = choose_candidate(plan.candidate, mine, {k: len(v) for k, v in state.items()})
        mask = None
        if mask_attachment is not None and candidate is None:
            # A mask belongs to one image: a remix of all four would drop it without a word.
            raise InvalidInput(f"Which candidate is the attached mask for? Reply again with its number "
                               f"and the mask, e.g. `2: {shown(plan.instruction, 60)}` (1 to {len(parent.seeds)}).")
        if mask_attachment is not None:
            mask = await asyncio.to_thread(attached_mask, mask_attachment, (parent.width, parent.height),
                                           self.config)
            if plan.mode is not Mode.INPAINT:
                plan = replace(plan, mode=Mode.INPAINT, region=plan.region or "the attached mask",
                               prompt=f"{parent.prompt}, {plan.instruction}")
        return refinement_for_plan(
            parent, plan, candidate, why, config=self.config, candidate_png=self._candidate_png(parent, candidate),
            mask_png=mask, has_instruct_model=self.has_instruct_model, has_masker=self.masker is not None)

    async def plan_button(self, *, round_id: str, action: str, candidate: int | None, user_id: int
                          ) -> Refinement:
        """What a 🔁 / V<k> / U<k> button on a round asks for; checks who may press it."""
        parent = await self.journal.round(round_id)
        if parent is None:
            raise NotARound(f"Round {round_id} is not in my log any more.")
        if self.config.refine.buttons_for == "requester" and user_id != parent.requester_id:
            raise NotAllowed("Only the person who asked for this round can use its buttons.")
        if candidate is not None and not 1 <= candidate <= len(parent.seeds):
            raise InvalidInput(f"Candidate #{candidate} does not exist in round {round_id}.")
        # The round's prompt passed the rules when it was made; phrases banned since then hold too.
        await self.moderation.screen(user_id, parent.prompt, parent.negative_prompt)
        return button_refinement(parent, action, candidate, self.config, self._candidate_png(parent, candidate))

    async def refine(self, refinement: Refinement, origin: Origin, show: StatusSink, *, message_id: int,
                     ack_message_id: int = 0) -> FinishedRound:
        """Make the mask if a region was named, log the request, and generate the child round."""
        request = refinement.request
        if refinement.needs_mask_from is not None and self.masker is not None:
            masker, image, phrase = self.masker, request.init_image, refinement.needs_mask_from
            assert image is not None
            mask = await self.queue.run_in_worker(lambda: masker(image, phrase))
            request = replace(request, mask_image=mask)
        await self.journal.append(RefinementRequest(
            event_id=new_id(), parent_round_id=refinement.parent.round_id,
            parent_candidate=refinement.candidate, user_id=origin.user_id,
            instruction=refinement.plan.instruction, plan=refinement.plan_json, channel_id=origin.channel_id,
            message_id=message_id))
        return await self.imagine(request, origin, show, refinement, ack_message_id=ack_message_id,
                                  note=refinement.summary)

    def _candidate_png(self, parent: Round, candidate: int | None) -> bytes | None:
        if candidate is None:
            return None
        try:
            return self.images.read(parent.image_paths[candidate - 1])
        except (OSError, IndexError):
            log.warning("image of round %s #%s is missing", parent.round_id, candidate)
            return None

    # --- votes ---------------------------------------------------------------------------------

    def candidate_for_emoji(self, emoji: str) -> int | None:
        """1-based candidate for a vote emoji, 0 for the "none is good" emoji, None for others."""
        votes = self.config.votes
        matched = match_emoji(emoji, (*votes.emoji, votes.none_emoji))  # `2⃣` counts as `2️⃣` (bot/emoji.py)
        if matched is None:
            return None
        return 0 if matched == votes.none_emoji else votes.emoji.index(matched) + 1

    async def record_vote(self, *, message_id: int, user_id: int, emoji: str, added: bool,
                          channel_id: int, guild_id: int | None) -> VoteOutcome | None:
        """Journal a vote or its retraction; None when it is not a vote or changes nothing."""
        candidate = self.candidate_for_emoji(emoji)
        if candidate is None:
            return None
        emoji = self.config.votes.none_emoji if candidate == 0 else self.config.votes.emoji[candidate - 1]
        found = await self.journal.round_for_message(message_id)
        if found is not None:
            self.reconciler.saw_live(found.round_id, candidate, user_id)  # wins over a comparison in flight
        # A flood's new votes are dropped, never a retraction: Discord no longer shows the vote, so
        # the journal must not keep it. Removals cannot flood (Discord sends one per earlier add, and
        # adds are limited), and a removal of nothing journaled is a no-op in append_vote.
        if found is None or (added and not self.accept_event(user_id)):
            return None  # not a round, or a reaction flood: dropped, never journaled
        if user_id in await self.moderation.opted_out():
            return None  # /forget-me: their votes are no longer logged
        event = VoteEvent(event_id=new_id(), round_id=found.round_id, candidate=candidate,
                          user_id=user_id, emoji=emoji, action="add" if added else "remove",
                          guild_id=guild_id, channel_id=channel_id, message_id=message_id)
        if not await self.journal.append_vote(event):
            return None  # a repeated add or a remove of nothing: idempotent
        return VoteOutcome(found.round_id, candidate, event.action)

    async def is_round_message(self, message_id: int) -> bool:
        return await self.journal.round_for_message(message_id) is not None

    async def round_for_message(self, message_id: int) -> Round:
        found = await self.journal.round_for_message(message_id)
        if found is None:
            raise NotARound("That message is not one of my image rounds.")
        return found

    # --- moderation and exports (bot/moderation.py) ----------------------------------------------

    def require(self, action: Action, member: Member) -> None:
        """Raise NotAllowed unless `member` may do `action` (see bot/permissions.py)."""
        self.moderation.require(action, member)

    # --- errors --------------------------------------------------------------------------------

    async def report_error(self, error: BaseException, *, user_id: int, channel_id: int) -> str:
        """The text to show for an error, journaled as an "error shown to a user" event."""
        text = user_message(error)
        name = type(error).__name__
        try:
            await self.journal.append(UserError(event_id=new_id(), user_id=user_id, channel_id=channel_id,
                                                error=name, message=text))
        except Exception:
            log.exception("could not journal an error shown to user %s", user_id)
        return text
