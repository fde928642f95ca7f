"""Every message the bot builds from user text fits Discord's limits, whatever the user typed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import render
from bot.config import Config, config_from_dict
from bot.discord_limits import MAX_CONTENT, clip, length, shown
from bot.errors import InvalidInput, user_message
from bot.options import build_request, parse_message
from bot.refinement import refinement_for_plan
from bot.service import QueueLine
from cogs.export import export_text
from cogs.moderation import modlog_line
from pipeline.jobs import JobListing, JobState, JobStatus
from pipeline.planner import PlanError, plan_refinement
from storage.records import ModerationAction, Round

CONFIG: Config = config_from_dict({})
PADDING = ["\u200b", "\u00ad", "\ue000", "\U0010fffd", "🦊", "\u202e", "\x00", "`", "*", "'", "\\"]

# Arbitrary text, and text padded with what repr() or UTF-16 makes longer than it looks.
user_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=2500) | st.builds(
    lambda word, pad, n: word + pad * n, st.sampled_from(["more ", "2: ", "make it ", "a fox ", ""]),
    st.sampled_from(PADDING), st.integers(0, 2100))


def parent_round(text: str) -> Round:
    return Round(round_id="0123456789ab", prompt=text, negative_prompt=text, mode="text2img", steps=4,
                 guidance=7.5, width=64, height=64, seeds=(1, 2, 3, 4), model_id=text, model_revision="",
                 scheduler="ddim", image_paths=("a", "b", "c", "d"), requester_id=1, guild_id=2, channel_id=3,
                 source="reply", queued_s=0.0, generate_s=0.0, parent_round_id="ba9876543210", parent_candidate=2,
                 instruction=text)


def messages_from(text: str) -> list[str]:
    """What each code path that echoes user text would send, built by the functions the cogs call."""
    parent = parent_round(text)
    sent = [render.prompt_ack(text), render.round_text(parent, CONFIG, note=text)]
    for state in JobState:
        status = JobStatus(state, 3, 12.0, 2, 4, "job-1", note=text)
        sent.append(render.status_text(status, text, "❌", note=text))
    queued = JobStatus(JobState.QUEUED, 1, 1.0, 0, 4)
    sent.append(render.queue_text([QueueLine(queued, 1.0, JobListing(f"job-{k}", k, text, queued, 1.0) if k % 3
                                             else None) for k in range(25)]))
    try:
        build_request(parse_message(text), CONFIG.generation)
    except InvalidInput as exc:
        sent.append(user_message(exc))
    try:
        plan = plan_refinement(text, parent.prompt, max_length=CONFIG.generation.max_prompt_length)
    except PlanError as exc:
        sent.append(user_message(InvalidInput(str(exc))))
    else:
        for candidate in (None, 2):
            try:
                refinement = refinement_for_plan(parent, plan, candidate, "your vote", config=CONFIG,
                                                 candidate_png=b"png", mask_png=None, has_instruct_model=True,
                                                 has_masker=True)
            except InvalidInput as exc:
                sent.append(user_message(exc))
                continue
            sent += [render.refine_ack(refinement.summary),
                     render.status_text(JobStatus(JobState.RUNNING, 0, None, 1, 4), plan.prompt, "❌",
                                        refinement.summary)]
    action = ModerationAction(event_id="e", action="banned_add", moderator_id=5, round_id=None,
                              target_user_id=None, reason=text)
    sent.append(modlog_line(action))
    return sent


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user_text)
def test_every_message_built_from_user_text_fits_discord(text: str) -> None:
    """Prompts, replies and phrases of any length and alphabet give messages of ≤ 2,000 UTF-16 units."""
    for message in messages_from(text):
        assert 0 < length(message) <= MAX_CONTENT, (length(message), message[:80])


def test_zero_width_padding_is_not_expanded() -> None:
    """A reply padded with 490 zero-width spaces is quoted as what it shows, not as `\\u200b` escapes."""
    text = "more " + "\u200b" * 490
    plan = plan_refinement(text, "a house")
    summary = refinement_for_plan(parent_round("a house"), plan, None, "no votes yet", config=CONFIG,
                                  candidate_png=None, mask_png=None, has_instruct_model=False,
                                  has_masker=False).summary
    assert "\\u200b" not in summary and "'more'" in summary


def test_clip_counts_utf16_and_never_splits_a_character() -> None:
    """An emoji outside the BMP counts two units; clipping keeps whole characters and ends with "…"."""
    assert length("🦊a") == 3
    assert clip("🦊" * 5, 6) == "🦊🦊…" and length(clip("🦊" * 5, 6)) == 5
    assert clip("short", 10) == "short"
    assert shown("a\u200b\u200bb \n\t c\u00ad", 10) == "ab c"


def test_export_text_fits() -> None:
    """The export summary fits even when Oxen's error is long."""
    from pathlib import Path

    from bot.moderation import ExportSummary
    summary = ExportSummary("x", Path("/" + "d" * 3000), {f"f{k}": k for k in range(400)}, 3, error="e" * 5000)
    assert length(export_text(summary)) <= MAX_CONTENT
