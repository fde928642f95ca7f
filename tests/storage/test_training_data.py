"""Which examples `refinery train` learns from: the exports' rules, pairs within rounds, a split by prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.exports import ExportFilters
from storage.journal import Journal
from storage.training_data import FeedbackImage, PreferencePair, held_out, select_examples
from tests.community import PROMPTS, build_community


def test_dpo_pairs_prefer_the_voted_candidates_and_leave_the_rest_out(journal: Journal, data_dir: Path) -> None:
    """Each usable round gives its 4 decided pairs (reddish 1/3 over bluish 2/4); ties (1-3, 2-4), the inpaint
    round, the flagged round and the forgotten user's votes are absent, and the reasons are counted."""
    community = build_community(journal, data_dir)
    data = select_examples(journal, data_dir, ExportFilters(), "dpo", held_out_fraction=0.25)
    examples = [*data.train, *data.held_out]
    assert all(isinstance(e, PreferencePair) for e in examples)
    assert len(examples) == 4 * len(community.rounds) and data.rounds_used == len(community.rounds)
    for pair in examples:
        assert pair.winner.name in ("1.png", "3.png") and pair.loser.name in ("2.png", "4.png")
        assert pair.winner.is_absolute() and pair.winner.parent == pair.loser.parent and pair.margin >= 1
    assert {e.round_id for e in examples} == set(community.rounds)
    assert data.left_out == {"flagged, opted out, or refines such a round": 1,
                             "inpaint round: its prompt is the reply, not a caption": 1}


def test_the_held_out_slice_is_by_prompt_and_deterministic(journal: Journal, data_dir: Path) -> None:
    """No prompt is on both sides; the same log splits the same way every time."""
    build_community(journal, data_dir)
    first = select_examples(journal, data_dir, ExportFilters(), "dpo", held_out_fraction=0.25)
    again = select_examples(journal, data_dir, ExportFilters(), "dpo", held_out_fraction=0.25)
    assert first == again and first.held_out and first.train
    assert not {e.caption for e in first.train} & {e.caption for e in first.held_out}
    assert {e.caption for e in first.held_out} == {c for c in {e.caption for e in first.held_out}
                                                   if held_out(c, 0.25)}
    assert held_out(PROMPTS[0], 0.0) is False


def test_kto_rates_every_image_by_its_net_votes(journal: Journal, data_dir: Path) -> None:
    """KTO: one example per image of every usable round; the voted (reddish) ones are desirable."""
    community = build_community(journal, data_dir)
    data = select_examples(journal, data_dir, ExportFilters(), "kto", held_out_fraction=0.25)
    examples = [*data.train, *data.held_out]
    assert len(examples) == 4 * len(community.rounds)
    for image in examples:
        assert isinstance(image, FeedbackImage)
        assert image.desirable == (image.image.name in ("1.png", "3.png")) and image.desirable == (image.net_votes > 0)
    summary = data.summary()
    assert summary["desirable"] == summary["undesirable"] == 2 * len(community.rounds)


def test_a_bad_method_or_fraction_is_refused(journal: Journal, data_dir: Path) -> None:
    """Unknown methods and held-out fractions outside [0, 1) raise with the value."""
    with pytest.raises(ValueError, match="'ppo'"):
        select_examples(journal, data_dir, ExportFilters(), "ppo")
    with pytest.raises(ValueError, match=r"1\.5"):
        select_examples(journal, data_dir, ExportFilters(), "dpo", held_out_fraction=1.5)
