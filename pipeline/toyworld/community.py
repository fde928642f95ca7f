"""A simulated community for the toy world: voters who look at a round's images and pick one.

A voter has a taste (a score computed from an image with `world.measure`) and a noise level (the share
of rounds in which they pick at random instead). A taste-less voter always picks at random: the null
case, where training must not find a preference that is not there. Nothing here speaks Discord: the
tests, the benchmark and the demo turn a voter's pick into a real reaction on the loopback server.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from pipeline.toyworld import world

Score = Callable[[world.Measure], float]


@dataclass(frozen=True)
class Taste:
    """A property of a toy-world image that voters may prefer more of."""

    name: str
    describe: str
    score: Score

    def of(self, image: Image.Image) -> float:
        return self.score(world.measure(image))


TASTES: dict[str, Taste] = {
    taste.name: taste for taste in (
        Taste("large", "the shape's area (share of the image)", lambda m: m.area),
        Taste("small", "how little of the image the shape covers (1 − area)", lambda m: 1.0 - m.area),
        Taste("left", "how far left the shape sits (1 − centroid x)", lambda m: 1.0 - m.x),
        Taste("bright", "the shape's brightness (mean of its pixels, 0–255)", lambda m: m.brightness),
    )
}


@dataclass(frozen=True)
class Voter:
    user_id: int
    taste: Taste | None  # None: picks at random every time
    noise: float = 0.0  # share of rounds voted at random

    def pick(self, images: Sequence[Image.Image], rng: random.Random) -> int:
        """The 1-based position of the candidate this voter reacts to."""
        if self.taste is None or rng.random() < self.noise:
            return rng.randrange(len(images)) + 1
        scores = [self.taste.of(image) for image in images]
        return max(range(len(images)), key=scores.__getitem__) + 1


def community(user_ids: Sequence[int], taste: str | None, *, noise: float = 0.1) -> list[Voter]:
    """Voters sharing one taste (a name from TASTES, or None for the taste-less community)."""
    if taste is not None and taste not in TASTES:
        raise ValueError(f"taste must be one of {', '.join(TASTES)} or None, got {taste!r}")
    return [Voter(uid, TASTES[taste] if taste else None, noise) for uid in user_ids]


def round_prompts(count: int, *, held_out: bool, seed: int = 0) -> list[str]:
    """`count` captions, cycling over the training (or held-out) combinations in a shuffled order."""
    combos = world.combinations(held_out=held_out)
    random.Random(seed).shuffle(combos)
    return [world.caption(*combos[i % len(combos)]) for i in range(count)]
