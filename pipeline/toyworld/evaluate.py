"""Did training move what the model draws? Paired comparisons of images made with the same seeds.

`shift` compares a taste's score image by image (base vs adapter, same prompt and seed) with a one-sided
sign test: under "the adapter changes nothing toward the taste" each non-tied pair is a fair coin.
`prompt_following` and `variety` say whether the movement came with a collapse: the share of images
whose shape has the caption's colour, and how different the images of one round are from each other.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.stats import binomtest

from pipeline.toyworld import world
from pipeline.toyworld.community import Taste


@dataclass(frozen=True)
class Shift:
    taste: str
    pairs: int
    higher: int  # pairs where the adapter's image scores higher
    lower: int
    mean_difference: float  # adapter − base, in the taste's units
    p_value: float  # one-sided sign test: adapter higher
    p_two_sided: float  # sign test: a shift either way

    def line(self) -> str:
        return (f"{self.taste}: the adapter's image scored higher in {self.higher} of {self.pairs} same-seed pairs "
                f"(lower in {self.lower}; mean difference {self.mean_difference:+.3f}; sign test p = "
                f"{self.p_value:.2g})")


def shift(taste: Taste, base: Sequence[Image.Image], adapted: Sequence[Image.Image]) -> Shift:
    if len(base) != len(adapted) or not base:
        raise ValueError(f"need the same positive number of base and adapter images, got {len(base)} and "
                         f"{len(adapted)}")
    differences = np.array([taste.of(a) - taste.of(b) for b, a in zip(base, adapted, strict=True)])
    higher, lower = int((differences > 0).sum()), int((differences < 0).sum())
    decisive = higher + lower
    p = binomtest(higher, decisive, 0.5, alternative="greater").pvalue if decisive else 1.0
    both = binomtest(higher, decisive, 0.5).pvalue if decisive else 1.0
    return Shift(taste.name, len(differences), higher, lower, float(differences.mean()), float(p), float(both))


def prompt_following(images: Sequence[Image.Image], prompts: Sequence[str]) -> float:
    """Share of images whose shape has the colour their prompt names."""
    right = sum(world.measure(image).colour == _colour_of(prompt) for image, prompt in zip(images, prompts,
                                                                                            strict=True))
    return right / len(images)


def variety(rounds: Sequence[Sequence[Image.Image]]) -> float:
    """Mean root-mean-square pixel difference (0–255) between two images of the same round."""
    distances = []
    for images in rounds:
        arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) for image in images]
        distances += [float(np.sqrt(((a - b) ** 2).mean())) for a, b in itertools.combinations(arrays, 2)]
    return float(np.mean(distances))


def _colour_of(prompt: str) -> str | None:
    return next((word for word in prompt.lower().split() if word in world.COLOURS), None)
