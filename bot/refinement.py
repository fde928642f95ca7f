"""Refinement: a reply or a button on a round becomes the request for a child round.

Pure decisions, no I/O: which candidate is refined, how the planner's plan becomes a
`GenerationRequest`, and the sentence that tells the user what is happening. The service does the
lookups (round, votes, images) and the generation.

A child round builds on the parent's *shown* seeds (`Round.shown_seeds`): the child's message shows its
seeds, and an arena parent's own seeds are secret (they would let anyone regenerate its base candidates).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace

from bot.config import Config
from bot.discord_limits import shown
from bot.errors import InvalidInput
from pipeline.masks import UnreadableMask, read_user_mask
from pipeline.planner import Plan, fallback_to_conditioning
from pipeline.requests import MAX_SEED, GenerationRequest, Mode, consecutive_seeds
from storage.records import Round


@dataclass(frozen=True)
class Refinement:
    """A decided refinement: the parent, the chosen candidate, the plan, and the request to run."""

    parent: Round
    candidate: int | None  # 1-based; None = a remix of all four
    plan: Plan
    request: GenerationRequest
    summary: str  # "refining #2 by inpainting 'the sky' with 'a sunset'"
    source: str  # "reply" or "button"
    needs_mask_from: str | None = None  # a region phrase for CLIPSeg, when no mask was attached

    @property
    def plan_json(self) -> str:
        return json.dumps(self.plan.to_dict(), ensure_ascii=False, sort_keys=True)


def choose_candidate(named: int | None, my_votes: set[int], totals: dict[int, int]) -> tuple[int | None, str]:
    """An explicit number wins; else the replier's single vote; else the top-voted (ties → lowest);
    else None (no votes at all: remix)."""
    if named is not None:
        return named, "as you asked"
    mine = sorted(k for k in my_votes if k > 0)
    if len(mine) == 1:
        return mine[0], "your vote"
    voted = {k: n for k, n in totals.items() if k > 0 and n > 0}
    if voted:
        best = max(voted.values())
        return min(k for k, n in voted.items() if n == best), "the most votes"
    return None, "no votes yet"


def refinement_for_plan(parent: Round, plan: Plan, candidate: int | None, why: str, *, config: Config,
                        candidate_png: bytes | None, mask_png: bytes | None, has_instruct_model: bool,
                        has_masker: bool) -> Refinement:
    """Turn a plan into a request: img2img / instruct / inpaint from the chosen candidate, or a remix."""
    notes: list[str] = []
    if plan.mode is Mode.INSTRUCT and not has_instruct_model:
        plan = fallback_to_conditioning(plan, parent.prompt)
        notes.append("no instruction-edit model is configured, so the instruction became conditioning")
    if plan.mode is Mode.INPAINT and mask_png is None and not has_masker:
        plan = fallback_to_conditioning(plan, parent.prompt)
        notes.append("no CLIPSeg model is configured to find the region (attach a mask image to inpaint)")
    count = config.generation.candidates
    steps = plan.steps if plan.steps is not None else parent.steps
    guidance = plan.guidance if plan.guidance is not None else parent.guidance
    _check_range("steps", steps, config.generation.min_steps, config.generation.max_steps)
    _check_range("guidance", guidance, 0.0, config.generation.max_guidance)
    common = {"negative_prompt": _join(parent.negative_prompt, plan.negative), "steps": steps,
              "guidance": guidance, "width": parent.width, "height": parent.height}
    if candidate is None:
        # A remix: the instruction as a prompt change to all four, on the parent's own seeds.
        prompt = fallback_to_conditioning(plan, parent.prompt).prompt
        seeds = consecutive_seeds(plan.seed, count) if plan.seed is not None else parent.shown_seeds
        request = GenerationRequest(prompt=prompt, seeds=seeds, mode=Mode.TEXT, **common)
        summary = f"remixing all four with '{shown(plan.instruction, 200)}' ({why})"
        return Refinement(parent, None, replace(plan, mode=Mode.TEXT, prompt=prompt), request,
                          _with_notes(summary, notes), "reply")
    if candidate_png is None:
        raise InvalidInput(f"The image of candidate #{candidate} is missing, so it cannot be refined.")
    first = plan.seed if plan.seed is not None else parent.shown_seeds[candidate - 1]
    strength = plan.strength if plan.strength is not None else config.refine.strength
    request = GenerationRequest(
        prompt=plan.prompt, seeds=consecutive_seeds(first, count), mode=plan.mode, init_image=candidate_png,
        mask_image=mask_png if plan.mode is Mode.INPAINT else None, strength=strength,
        image_guidance=config.refine.image_guidance, **common)
    summary = f"refining #{candidate} ({why}) by {plan.describe()}"
    needs_mask = plan.region if plan.mode is Mode.INPAINT and mask_png is None else None
    return Refinement(parent, candidate, replace(plan, strength=strength), request,
                      _with_notes(summary, notes), "reply", needs_mask_from=needs_mask)


def button_refinement(parent: Round, action: str, candidate: int | None, config: Config,
                      candidate_png: bytes | None, rng: random.Random | None = None) -> Refinement:
    """🔁 reroll (new seeds), V<k> variation (img2img, low strength, new seeds), U<k> upscale."""
    rng = rng or random.SystemRandom()
    count = config.generation.candidates
    new_seeds = consecutive_seeds(rng.randint(0, MAX_SEED), count)
    base = {"negative_prompt": parent.negative_prompt, "steps": parent.steps, "guidance": parent.guidance}
    plan_args = {"candidate": candidate, "prompt": parent.prompt, "explicit": True}
    if action == "reroll":
        request = GenerationRequest(prompt=parent.prompt, seeds=new_seeds, width=parent.width,
                                    height=parent.height, **base)
        plan = Plan(mode=Mode.TEXT, instruction="reroll", **plan_args)
        return Refinement(parent, None, plan, request, "rerolling with new seeds", "button")
    if candidate is None or candidate_png is None:
        raise InvalidInput("That button needs a candidate image, which is missing.")
    if action == "variation":
        strength = config.refine.variation_strength
        width, height, seeds = parent.width, parent.height, new_seeds
        summary = f"variations of #{candidate}"
    elif action == "upscale":
        strength = config.refine.upscale_strength
        width, height = (_upscaled(side, config) for side in (parent.width, parent.height))
        seeds = consecutive_seeds(parent.shown_seeds[candidate - 1], count)
        summary = f"re-running #{candidate} in detail at {width}×{height}"
    else:
        raise InvalidInput(f"Unknown button action {action!r}.")
    request = GenerationRequest(prompt=parent.prompt, seeds=seeds, mode=Mode.IMAGE, init_image=candidate_png,
                                strength=strength, width=width, height=height, **base)
    plan = Plan(mode=Mode.IMAGE, instruction=action, strength=strength, **plan_args)
    return Refinement(parent, candidate, plan, request, summary, "button")


def _upscaled(side: int, config: Config) -> int:
    target = int(side * config.refine.upscale_factor) // 8 * 8
    return max(side, min(target, config.generation.max_size))


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidInput(f"{name}={value:g} is out of range: use {low:g} to {high:g}.")


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _with_notes(summary: str, notes: list[str]) -> str:
    return summary + "".join(f" — {note}" for note in notes)


def attached_mask(data: bytes, size: tuple[int, int], config: Config) -> bytes:
    """A mask attached to a reply, checked against `[refine]`'s limits and made a mask of `size`
    (InvalidInput says what is wrong with it). Decodes an image: run it off the event loop."""
    limits = config.refine
    try:
        return read_user_mask(data, size, max_bytes=limits.max_mask_bytes, max_pixels=limits.max_mask_pixels)
    except UnreadableMask as exc:
        raise InvalidInput(str(exc)) from None
