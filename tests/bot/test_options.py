"""Prompt and option parsing: defaults, message syntax, and a specific message for each bad input."""

import random

import pytest

from bot.config import GenerationConfig
from bot.errors import InvalidInput
from bot.options import PromptInput, build_request, parse_message, parse_size

LIMITS = GenerationConfig()


def test_message_options_and_negative() -> None:
    """`name=value` options and `--no` are lifted out of the prompt."""
    given = parse_message('a red fox seed=7 steps=20 guidance=5.5 size=512x768 at dawn --no blur, text')
    assert given == PromptInput(prompt="a red fox at dawn", negative="blur, text", seed=7, steps=20,
                                guidance=5.5, size="512x768")


def test_defaults_and_consecutive_seeds() -> None:
    """Missing options take the configured defaults; candidates get consecutive seeds."""
    request = build_request(PromptInput("  a   cat "), LIMITS, rng=random.Random(1))
    assert request.prompt == "a cat"
    assert (request.steps, request.guidance, request.width, request.height) == (25, 7.5, 512, 512)
    assert request.seeds == tuple(request.seeds[0] + k for k in range(4))


def test_explicit_seed_wraps_at_32_bits() -> None:
    """The last candidates' seeds wrap around instead of overflowing."""
    request = build_request(PromptInput("x", seed=2**32 - 2), LIMITS)
    assert request.seeds == (2**32 - 2, 2**32 - 1, 0, 1)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (PromptInput(""), "prompt is empty"),
        (PromptInput(" \n\t "), "prompt is empty"),
        (PromptInput("x" * 501), "501 characters long; the limit is 500"),
        (PromptInput("x", negative="n" * 600), "negative prompt is 600"),
        (PromptInput("x", steps=0), "steps=0 is out of range: use 1 to 60"),
        (PromptInput("x", steps=61), "steps=61 is out of range"),
        (PromptInput("x", guidance=-1), "guidance=-1 is out of range"),
        (PromptInput("x", guidance=21), "guidance=21 is out of range"),
        (PromptInput("x", size="500"), "width 500 is not a multiple of 8; try 496"),
        (PromptInput("x", size="7x7"), "width 7 is not a multiple of 8; try 64"),
        (PromptInput("x", size="99999"), "width 99999 is not a multiple of 8; try 768"),
        (PromptInput("x", size="509"), "width 509 is not a multiple of 8; try 512"),
        (PromptInput("x", size="512x300"), "height 300 is not a multiple of 8"),
        (PromptInput("x", size="1024"), "width 1024 is out of range: use 64 to 768"),
        (PromptInput("x", size="32"), "out of range"),
        (PromptInput("x", size="big"), "is not a size"),
        (PromptInput("x", seed=-5), "seed=-5 is out of range"),
    ],
)
def test_each_bad_input_has_its_own_message(given: PromptInput, message: str) -> None:
    """Every bad value is refused with a message naming it."""
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        build_request(given, LIMITS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a fox colour=red", "Unknown option `colour=`"),
        ("a fox steps=ten", "steps='ten' is not a whole number"),
        ("a fox guidance=nan", "not a finite number"),
        ("a fox seed=1.5", "seed='1.5' is not a whole number"),
    ],
)
def test_bad_message_options(text: str, message: str) -> None:
    """Unknown or malformed options in a message are refused, naming the option."""
    with pytest.raises(InvalidInput, match=message):
        parse_message(text)


def test_sizes() -> None:
    """Sizes accept `N`, `WxH` and `W×H`."""
    assert parse_size("256", LIMITS) == (256, 256)
    assert parse_size("256x512", LIMITS) == (256, 512)
    assert parse_size(" 128 × 64 ", LIMITS) == (128, 64)
    assert parse_size(None, LIMITS) == (512, 512)


def test_prompt_with_equals_sign_in_capitals_is_kept() -> None:
    """Only lowercase `name=value` tokens are options; E=mc2 stays in the prompt."""
    assert parse_message("poster of E=mc2").prompt == "poster of E=mc2"


@pytest.mark.parametrize("text", ["--no", "  --no  ", "--no blur, text", "seed=3 --no"])
def test_a_message_with_only_a_negative_prompt_is_refused(text: str) -> None:
    """`--no` with nothing before it is an empty prompt, never the prompt "--no"."""
    assert parse_message(text).prompt == ""
    with pytest.raises(InvalidInput, match="prompt is empty"):
        build_request(parse_message(text), LIMITS)


def test_a_trailing_bare_no_is_an_empty_negative_prompt() -> None:
    """`a fox --no` draws a fox with no negative prompt."""
    assert parse_message("a fox --no") == PromptInput(prompt="a fox", negative="")
