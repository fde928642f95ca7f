"""Parsing and validating a prompt and its options, from a slash command or a plain message.

Message syntax: free text, with options as `name=value` anywhere (`seed=42 steps=20 size=512x768`),
and a negative prompt after `--no` (`a red fox --no blur, watermark`). Pure functions, no I/O.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from bot.config import GenerationConfig
from bot.errors import InvalidInput
from pipeline.requests import MAX_SEED, GenerationRequest, consecutive_seeds

OPTION_NAMES = ("seed", "steps", "guidance", "size")
_OPTION = re.compile(r'(?<!\S)([a-z_]{2,20})=("[^"]*"|\S+)')
_NEGATIVE = re.compile(r"(?<!\S)--no(?:\s+(.*))?$", re.DOTALL)  # a bare trailing `--no` too
_SIZE = re.compile(r"^\s*(\d{1,5})\s*(?:[x×*]\s*(\d{1,5}))?\s*$")


@dataclass(frozen=True)
class PromptInput:
    """What the user typed, before validation. `None` means "use the default"."""

    prompt: str
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    size: str | None = None


def parse_message(text: str) -> PromptInput:
    """Split a message into prompt and options; unknown `name=value` options are refused."""
    negative = ""
    match = _NEGATIVE.search(text)
    if match:
        negative = (match.group(1) or "").strip()
        text = text[: match.start()]
    values: dict[str, str] = {}
    for option in _OPTION.finditer(text):
        name, value = option.group(1), option.group(2).strip('"')
        if name not in OPTION_NAMES:
            raise InvalidInput(f"Unknown option `{name}=`. Options are: {', '.join(OPTION_NAMES)} "
                               "(as `name=value`), and `--no <negative prompt>`.")
        values[name] = value
    prompt = " ".join(_OPTION.sub(" ", text).split())
    return PromptInput(
        prompt=prompt,
        negative=negative,
        seed=_int("seed", values["seed"]) if "seed" in values else None,
        steps=_int("steps", values["steps"]) if "steps" in values else None,
        guidance=_float("guidance", values["guidance"]) if "guidance" in values else None,
        size=values.get("size"),
    )


def build_request(given: PromptInput, limits: GenerationConfig, *, rng: random.Random | None = None
                  ) -> GenerationRequest:
    """Validate user input against the configured limits and fill in defaults."""
    prompt = " ".join(given.prompt.split())
    if not prompt:
        raise InvalidInput("The prompt is empty: describe the image you want, e.g. `a red fox at dawn`.")
    if len(prompt) > limits.max_prompt_length:
        raise InvalidInput(f"The prompt is {len(prompt)} characters long; the limit is "
                           f"{limits.max_prompt_length}.")
    negative = " ".join(given.negative.split())
    if len(negative) > limits.max_prompt_length:
        raise InvalidInput(f"The negative prompt is {len(negative)} characters long; the limit is "
                           f"{limits.max_prompt_length}.")
    steps = limits.default_steps if given.steps is None else given.steps
    if not limits.min_steps <= steps <= limits.max_steps:
        raise InvalidInput(f"steps={steps} is out of range: use {limits.min_steps} to {limits.max_steps}.")
    guidance = limits.default_guidance if given.guidance is None else given.guidance
    if not 0.0 <= guidance <= limits.max_guidance:
        raise InvalidInput(f"guidance={guidance:g} is out of range: use 0 to {limits.max_guidance:g}.")
    width, height = parse_size(given.size, limits)
    if given.seed is not None and not 0 <= given.seed <= MAX_SEED:
        raise InvalidInput(f"seed={given.seed} is out of range: use 0 to {MAX_SEED}.")
    first = given.seed if given.seed is not None else (rng or random.SystemRandom()).randint(0, MAX_SEED)
    seeds = consecutive_seeds(first, limits.candidates)
    return GenerationRequest(prompt=prompt, negative_prompt=negative, seeds=seeds, steps=steps,
                             guidance=guidance, width=width, height=height)


def parse_size(size: str | None, limits: GenerationConfig) -> tuple[int, int]:
    """`512`, `512x768` or `None` (the default) → (width, height), checked against the limits."""
    if size is None or not size.strip():
        return limits.default_width, limits.default_height
    match = _SIZE.match(size)
    if not match:
        raise InvalidInput(f"size={size!r} is not a size: write `512` or `512x768` (width x height).")
    width = int(match.group(1))
    height = int(match.group(2) or match.group(1))
    for name, value in (("width", width), ("height", height)):
        if value % 8:
            raise InvalidInput(f"The {name} {value} is not a multiple of 8; try {_nearest_size(value, limits)}.")
        if not limits.min_size <= value <= limits.max_size:
            raise InvalidInput(f"The {name} {value} is out of range: use {limits.min_size} to "
                               f"{limits.max_size} pixels.")
    return width, height


def _nearest_size(value: int, limits: GenerationConfig) -> int:
    """The multiple of 8 nearest to `value` that the limits allow (suggesting 8 for 7, or 99992 for
    99999, would only earn a second refusal)."""
    low, high = -(-limits.min_size // 8) * 8, limits.max_size // 8 * 8
    return min(max(round(value / 8) * 8, low), high)


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name}={value!r} is not a whole number.") from None


def _float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"{name}={value!r} is not a number.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidInput(f"{name}={value!r} is not a finite number.")
    return number
