"""The loop on images the bot made: simulated communities vote on the toy model's rounds through the real bot,
`refinery train` learns from each community's votes, `/model use` serves the adapter, and the bot then draws
more of what those voters preferred (same prompts, same seeds) without losing prompt-following or variety.

The null case: an adapter trained on a taste-less community's votes is one random draw, and like any
adapter it changes every image a little in the same direction, so a sign test over image pairs can find
*some* consistent change in it (the unit of chance is the training run, not the pair — the arena's lesson).
What the votes must cause is measured against it: every community votes on the same rounds (the same
images), and each taste's adapter draws more of its taste than the base model AND than the adapter
trained on random votes of those same images; the taste-less adapter's own drift is small beside the
tasteful adapters' shifts.

One bot session serves every community, each in its own channel (`refinery train --channel`), so the base
model's images of the evaluation prompts are drawn once and every adapter is compared with the same ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bot.community import COMMUNITY_SETTINGS, PlayedRound, draw, play, slash_text, train_and_use
from bot.devserver import MANAGE_GUILD, DiscordDevServer
from bot.offline import offline_bot, offline_config
from pipeline.toyworld import evaluate
from pipeline.toyworld.community import TASTES, community, round_prompts
from storage.arena import ArenaReport, arena_report, read_arena
from storage.journal import Journal

pytestmark = pytest.mark.slow

VOTED_ROUNDS = 48
# 16 rounds of 4 on the held-out captions: 64 same-seed pairs, each a prompt no voted round had.
EVAL_PROMPTS = [(prompt, 5000 + i) for i, prompt in enumerate(round_prompts(16, held_out=True, seed=3))]
# Each community votes in its own channel; None is the taste-less one. Two opposite tastes on the same
# images: the votes, not the images or the training, must decide which way the adapter moves.
COMMUNITIES = ("large", "small", None)
ARENA_ROUNDS = 40  # README "The toy world": the arena calls the "large" adapter better within this many rounds
TRAINED = {"large": ("large", ["--steps", "300"]), "small": ("small", ["--steps", "300"]),
           "none": (None, ["--steps", "300"])}


@dataclass(frozen=True)
class Session:
    base: list[PlayedRound]
    adapted: dict[str, list[PlayedRound]]  # by adapter name
    outputs: dict[str, str]  # what `refinery train` printed, by adapter name
    arena_text: str  # /arena results after ARENA_ROUNDS rounds of "large" against the base
    arena: ArenaReport

    @staticmethod
    def images(rounds: list[PlayedRound]) -> list[Image.Image]:
        return [image for rnd in rounds for image in rnd.images]

    @property
    def prompts(self) -> list[str]:
        return [rnd.prompt for rnd in self.base for _ in rnd.images]

    def shift(self, adapter: str, taste: str, *, against: str | None = None) -> evaluate.Shift:
        """`adapter`'s images against the base model's (or against adapter `against`'s), same prompts and seeds."""
        reference = self.base if against is None else self.adapted[against]
        return evaluate.shift(TASTES[taste], self.images(reference), self.images(self.adapted[adapter]))

    def following(self, rounds: list[PlayedRound]) -> float:
        return evaluate.prompt_following(self.images(rounds), self.prompts)


async def _session(toy_model: Path, folder: Path) -> Session:
    async with DiscordDevServer() as server:
        asker, mod = server.add_user("asker"), server.add_user("mod", permissions=MANAGE_GUILD)
        channels = {taste: server.add_channel(f"votes-{taste or 'none'}") for taste in COMMUNITIES}
        evaluation = server.add_channel("evaluation")
        config = offline_config(server, toy_model, folder / "data", COMMUNITY_SETTINGS)
        config_file = folder / "config.toml"
        config_file.write_text(f'[model]\nid = "{toy_model}"\nlocal_files_only = true\n\n[storage]\n'
                               'data_dir = "data"\n', encoding="utf-8")
        async with offline_bot(server, config) as app:
            # Every community votes on the same 48 rounds (same prompts and seeds: the same images), each in its
            # own channel, so the taste-less adapter saw exactly the images the others saw, with random votes.
            for taste, channel in channels.items():
                voters = community([server.add_user(f"{taste}-voter{i}") for i in range(3)], taste, noise=0.1)
                await play(server, app, channel, asker, voters, round_prompts(VOTED_ROUNDS, held_out=False), seed=1)
            base = await draw(server, app, evaluation, asker, EVAL_PROMPTS)
            adapted, outputs = {}, {}
            for name, (taste, args) in TRAINED.items():
                outputs[name] = await train_and_use(server, config_file, name, moderator=mod, channel=evaluation,
                                                    train_args=[*args, "--channel", str(channels[taste])])
                adapted[name] = await draw(server, app, evaluation, asker, EVAL_PROMPTS)
            # The arena: blind rounds of the "large" adapter against the base, voted by a community of that taste.
            arena = server.add_channel("arena")
            await slash_text(server, "model off", {}, mod, arena)
            await slash_text(server, "arena start", {"name": "large", "fraction": 1.0}, mod, arena)
            voters = community([server.add_user(f"arena-voter{i}") for i in range(3)], "large", noise=0.1)
            await play(server, app, arena, asker, voters, round_prompts(ARENA_ROUNDS, held_out=True, seed=9), seed=9)
            arena_text = await slash_text(server, "arena results", {}, asker, arena)
    journal = Journal(config.journal_path)
    try:
        (report,) = arena_report(read_arena(journal, config.data_dir), "large")
    finally:
        journal.close()
    session = Session(base, adapted, outputs, arena_text, report)
    for name, (taste, _) in TRAINED.items():  # what README "The toy world" reports (pytest -s shows it)
        print(f"{name}: prompt-following {session.following(base):.2f} → {session.following(adapted[name]):.2f}")
        for measured in TASTES:
            print(f"  {session.shift(name, measured).line()}")
        if taste is not None:
            print(f"  against the taste-less adapter: {session.shift(name, taste, against='none').line()}")
    print(f"small against large: {session.shift('small', 'small', against='large').line()}")
    print(arena_text)
    return session


@pytest.fixture(scope="module")
def session(toy_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Session:
    return asyncio.run(_session(toy_model, tmp_path_factory.mktemp("toy-loop")))


def _check_without_collapse(session: Session, adapter: str) -> None:
    base, adapted = session.base, session.adapted[adapter]
    assert session.following(adapted) >= 0.5 * session.following(base), (session.following(base),
                                                                         session.following(adapted))
    assert evaluate.variety([r.images for r in adapted]) >= 0.5 * evaluate.variety([r.images for r in base])


def test_votes_for_large_shapes_make_the_bot_draw_larger_shapes(session: Session) -> None:
    """48 rounds voted for the largest shape → `refinery train --steps 300` (DPO, the model's own defaults) →
    larger shapes on new prompts with the same seeds than the base model and than the adapter trained on
    random votes of the same images: one-sided sign tests over 64 pairs, p < 0.01; prompt-following and
    variety stay at least half the base's."""
    assert "training dpo on" in session.outputs["large"]
    for against in (None, "none"):
        moved = session.shift("large", "large", against=against)
        assert moved.pairs == 64
        assert moved.p_value < 0.01, f"against {against or 'the base model'}: {moved.line()}"
    _check_without_collapse(session, "large")


def test_votes_for_small_shapes_on_the_same_images_make_the_bot_draw_smaller_shapes(session: Session) -> None:
    """The opposite taste, voted on the very same 48 rounds: smaller shapes than the base model, and than the
    "large" adapter made from the same images (the votes decide the direction), p < 0.01; without collapse."""
    for against in (None, "large"):
        moved = session.shift("small", "small", against=against)
        assert moved.p_value < 0.01, f"against {against or 'the base model'}: {moved.line()}"
    _check_without_collapse(session, "small")


def test_a_taste_less_community_moves_less_than_a_taste(session: Session) -> None:
    """Random votes on the same images: the adapter drifts (as any adapter may; a sign test over the pairs of
    one training run cannot tell a drift from a taste, see README), but by less in mean area than the
    "large" votes move it, and its prompt-following and variety hold."""
    drift, moved = session.shift("none", "large"), session.shift("large", "large")
    assert abs(drift.mean_difference) < moved.mean_difference, (drift.line(), moved.line())
    _check_without_collapse(session, "none")


def test_the_arena_calls_the_learned_adapter_better_within_the_stated_rounds(session: Session) -> None:
    """40 blind rounds of the "large" adapter against the base, voted by a community of that taste: the
    sign test over rounds says the adapter is preferred (p < 0.05), and /arena results says so in rounds."""
    sign = session.arena.evidence.sign
    assert session.arena.rounds == ARENA_ROUNDS
    assert sign.rate is not None and sign.rate > 0.5 and (sign.p_value() or 1.0) < 0.05, session.arena_text
    assert f"adapter ahead in {sign.wins} of {sign.n} rounds" in session.arena_text
