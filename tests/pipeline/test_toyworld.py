"""The toy world: its drawings and measurements, the tokenizer, the shipped checkpoint and what it has learned."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from pipeline.tiny import write_vocab_files
from pipeline.toyworld import SHIPPED, TRAIN_DEFAULTS, Recipe, ToyModelDamaged, copy_toy_model, world
from pipeline.toyworld.build import prompt_following
from pipeline.toyworld.community import TASTES, Voter, community, round_prompts
from pipeline.toyworld.recipe import caption_words
from pipeline.toyworld.shipped import check_manifest
from pipeline.training.defaults import model_defaults


def test_measure_reads_back_what_was_drawn() -> None:
    """Colour, background, size order and position of 300 drawn scenes, held-out combinations included."""
    rng = random.Random(1)
    for k in range(300):
        combo = world.combinations(held_out=k % 2 == 0)[k % 8]
        scene = world.random_scene(rng, combo)
        m = world.measure(world.draw(scene))
        assert (m.colour, m.background) == (scene.colour, scene.background), scene
        assert abs(m.x - scene.x) < 0.08 and abs(m.y - scene.y) < 0.12, (scene, m)
    small = world.Scene("circle", "red", "white", 0.12, 0.5, 0.5, 1.0)
    large = world.Scene("circle", "red", "white", 0.30, 0.5, 0.5, 1.0)
    dark = world.Scene("circle", "red", "white", 0.30, 0.5, 0.5, 0.6)
    assert world.measure(world.draw(small)).area < world.measure(world.draw(large)).area
    assert world.measure(world.draw(dark)).brightness < world.measure(world.draw(large)).brightness
    assert world.measure(world.draw(dark)).colour == "red"  # a darker shade is still the same colour


def test_held_out_captions_are_never_drawn_for_training() -> None:
    train, held = world.combinations(held_out=False), world.combinations(held_out=True)
    assert set(held) == world.HELD_OUT and not set(train) & world.HELD_OUT
    assert len(train) + len(held) == len(world.COLOURS) * len(world.SHAPES) * len(world.BACKGROUNDS)
    rng = random.Random(0)
    assert all((s.colour, s.shape, s.background) not in world.HELD_OUT
               for s in (world.random_scene(rng) for _ in range(500)))


def test_every_caption_word_is_one_token(tmp_path: Path) -> None:
    """The BPE merges make each word a single token; other text still encodes byte by byte."""
    write_vocab_files(tmp_path, tuple(caption_words()))
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in caption_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tokenizer("a red circle on a white background", add_special_tokens=False).input_ids) == 7
    assert len(tokenizer("zebra 🦓", add_special_tokens=False).input_ids) > 2


def test_voters_pick_by_taste_and_taste_less_voters_at_random() -> None:
    small = world.draw(world.Scene("circle", "red", "white", 0.12, 0.5, 0.5, 1.0))
    large = world.draw(world.Scene("circle", "red", "white", 0.30, 0.5, 0.5, 1.0))
    rng = random.Random(0)
    picky = Voter(1, TASTES["large"], noise=0.0)
    assert {picky.pick([small, large, small, small], rng) for _ in range(20)} == {2}
    random_picks = [Voter(2, None).pick([small, large, small, small], rng) for _ in range(400)]
    assert all(80 <= random_picks.count(k) <= 120 for k in (1, 2, 3, 4))
    noisy = [Voter(3, TASTES["large"], noise=0.5).pick([small, large, small, small], rng) for _ in range(400)]
    assert 0.55 < noisy.count(2) / 400 < 0.75  # half at random (1/4 of those right) + half by taste
    with pytest.raises(ValueError, match="taste must be one of"):
        community([1], "purple-ish")
    assert set(round_prompts(8, held_out=True)) == {world.caption(*c) for c in world.HELD_OUT}


def test_shipped_checkpoint_matches_its_manifest_and_recipe(tmp_path: Path) -> None:
    """The checkpoint in the repository was built by today's recipe, file for file; damage is named."""
    manifest = check_manifest(SHIPPED)
    assert manifest["recipe_digest"] == Recipe().digest()
    assert json.loads((SHIPPED / "refinery_train.json").read_text()) == TRAIN_DEFAULTS
    damaged = tmp_path / "damaged"
    shutil.copytree(SHIPPED, damaged)
    weights = damaged / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ToyModelDamaged, match=r"diffusion_pytorch_model\.safetensors does not match"):
        copy_toy_model(tmp_path / "out", source=damaged)
    other = Recipe(unet_stages=(1,))
    with pytest.raises(ToyModelDamaged, match="another recipe"):
        check_manifest(SHIPPED, other)


def test_copy_is_instant_and_loads_as_an_ordinary_pipeline(tmp_path: Path) -> None:
    out = copy_toy_model(tmp_path / "toy")
    assert copy_toy_model(out) == out  # the same model there already: left as it is
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("someone's file")
    with pytest.raises(FileExistsError, match="not empty"):
        copy_toy_model(tmp_path / "busy")
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert model_defaults(out) == {"beta": None, **TRAIN_DEFAULTS, "resolution": 64}  # β: the method's own


def test_training_defaults_of_a_folder_without_a_file_and_of_a_hub_id(tmp_path: Path) -> None:
    assert model_defaults("stable-diffusion-v1-5/stable-diffusion-v1-5")["resolution"] == 512
    (tmp_path / "refinery_train.json").write_text('{"lr": 1, "warp": 9}')
    with pytest.raises(ValueError, match="unknown training defaults warp"):
        model_defaults(tmp_path)


@pytest.fixture(scope="module")
def toy_pipe(toy_model: Path) -> StableDiffusionPipeline:
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(toy_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_toy_model_draws_the_colour_its_caption_names(toy_pipe: StableDiffusionPipeline) -> None:
    """Held-out caption combinations, 64×64, DDIM 10 steps, guidance 7.5: the shape has the caption's colour
    in ≥ 60 % of 64 samples, where a model that ignored the colour word would manage 1 in 6 (17 %)."""
    share = prompt_following(toy_pipe, per_combo=8)
    assert share >= 0.60, share


def test_samples_of_one_prompt_differ_in_what_people_could_prefer(toy_pipe: StableDiffusionPipeline) -> None:
    """Eight seeds of one prompt: the shape's size, position and shade spread, so a taste has room to move."""
    images = toy_pipe("a blue square on a white background", num_images_per_prompt=8, num_inference_steps=10,
                      generator=[torch.Generator().manual_seed(s) for s in range(8)], height=64, width=64).images
    measures = [world.measure(image) for image in images]
    values = {"area": [m.area for m in measures], "x": [m.x for m in measures],
              "brightness": [m.brightness for m in measures]}
    spread = {name: max(v) - min(v) for name, v in values.items()}
    # Measured at commit time: area 0.31, x 0.36, brightness 21 (of 0–255); the bounds leave room for other CPUs.
    assert spread["area"] > 0.05 and spread["x"] > 0.2 and spread["brightness"] > 10, spread


def test_a_rebuild_runs_every_stage_and_saves_a_loadable_pipeline(tmp_path: Path) -> None:
    """The trainer behind `refinery toy-model --rebuild`, on a few steps: two UNet stages (the second starts
    from the first's averaged weights), a folder an unmodified pipeline loads, its recipe digest recorded."""
    from pipeline.toyworld.build import build_toy_model

    torch.set_num_threads(1)
    recipe = Recipe(vae_steps=2, vae_batch=4, unet_stages=(2, 2), unet_batch=4, dataset_size=16)
    out = build_toy_model(tmp_path / "toy", recipe)
    assert json.loads((out / "recipe.json").read_text())["digest"] == recipe.digest() != Recipe().digest()
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe(world.caption("red", "circle", "white"), num_inference_steps=2, height=64, width=64,
                output_type="np").images.shape == (1, 64, 64, 3)
    assert not (tmp_path / ".toy.building").exists()
