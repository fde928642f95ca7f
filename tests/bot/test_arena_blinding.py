"""Blinding: an arena round shows a seed that makes none of its candidates, and nothing built on it shows theirs."""

from __future__ import annotations

import random

from bot import render
from bot.adapters import arena_request
from bot.config import Config, config_from_dict
from bot.refinement import button_refinement, refinement_for_plan
from pipeline.planner import plan_refinement
from pipeline.requests import AdapterRef, GenerationRequest, consecutive_seeds
from storage.records import Round
from tests.helpers import make_round

CONFIG: Config = config_from_dict({})
ASKED = GenerationRequest(prompt="a red fox", seeds=(21, 22, 23, 24), steps=4, guidance=7.5, width=64, height=64)
SECRET = (900, 500, 500, 900)  # arms "abba" on two secret seeds


def arena_parent() -> Round:
    return make_round(seeds=SECRET, arms="abba", adapter="red@sha256:0123456789ab", shown_seed=21)


def test_the_round_shows_the_asked_seed_and_the_journal_keeps_the_secret_ones() -> None:
    """The message reads "seed `21`" like an ordinary round asked with 21; the record keeps the real seeds
    (exports and training regenerate from them) and both survive a trip through dicts."""
    request = arena_request(ASKED, AdapterRef("red", "f" * 64), random.Random(3))
    assert request.shown_seed == 21 and GenerationRequest.from_dict(request.to_dict()) == request
    parent = arena_parent()
    assert Round.from_dict(parent.to_dict()) == parent
    text = render.round_text(parent, CONFIG)
    assert text == render.round_text(make_round(round_id=parent.round_id, seeds=ASKED.seeds), CONFIG)
    assert "seed `21`" in text and "500" not in text and "900" not in text


def test_refinements_of_an_arena_round_build_on_its_shown_seeds() -> None:
    """Upscale, a refinement of one candidate and a remix of all four take their seeds from the shown seed,
    never from the secret ones, which the child's message would show."""
    parent = arena_parent()
    assert parent.shown_seeds == (21, 22, 23, 24) and make_round(seeds=SECRET).shown_seeds == SECRET
    upscale = button_refinement(parent, "upscale", 2, CONFIG, b"png").request
    assert upscale.seeds == consecutive_seeds(22, 4)
    plan = plan_refinement("make it blue", parent.prompt, max_length=CONFIG.generation.max_prompt_length)
    one = refinement_for_plan(parent, plan, 3, "your vote", config=CONFIG, candidate_png=b"png", mask_png=None,
                              has_instruct_model=True, has_masker=True).request
    remix = refinement_for_plan(parent, plan, None, "no votes yet", config=CONFIG, candidate_png=None,
                                mask_png=None, has_instruct_model=True, has_masker=True).request
    assert one.seeds == consecutive_seeds(23, 4) and remix.seeds == (21, 22, 23, 24)
    for child in (upscale, one, remix):
        assert not set(child.seeds) & set(SECRET)
