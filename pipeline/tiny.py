"""Tiny random-weight checkpoints laid out like real ones, for tests and `demo` with no model hub.

Every builder writes a folder that the ordinary `from_pretrained(folder, local_files_only=True)` loads,
so the code under test is the same loading code a real hub checkpoint goes through. The images are
noise, but shapes, seeds, schedulers, progress and cancelling all behave as with a real model.

Builders are deterministic (`torch.manual_seed(seed)` before any weight is made) and cached: a folder
holding a complete build of the same kind and seed is returned untouched. A build is written into a
temporary sibling folder, a marker file is written last, and the folder is renamed into place, so an
interrupted or concurrent build never leaves a half-written checkpoint under `folder`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    ViTImageProcessor,
)

log = logging.getLogger(__name__)

MARKER = ".refinery-tiny.json"
# Bump when what a builder writes changes, so stale cached folders are rebuilt.
FORMAT = 2
_HIDDEN = 32  # text encoder width == UNet cross-attention width
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SafetyVerdict = Literal["red", "all", "none"]
SAFETY_REFERENCE = (255, 0, 0)  # the colour the "red" tiny safety checker flags
SAFETY_THRESHOLD = 0.95  # its cosine-similarity threshold


def build_tiny_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x-style text-to-image checkpoint (4-channel UNet) in `folder`."""
    return _build_pipeline_checkpoint(Path(folder), "sd", StableDiffusionPipeline, in_channels=4, seed=seed)


def build_tiny_inpaint_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """A whole inpainting checkpoint (9-channel UNet: latents + mask + masked-image latents).

    Its VAE, tokenizer and text encoder are the base checkpoint's (same seed), as with
    runwayml/stable-diffusion-inpainting and SD 1.5, so a loader may share them with the base pipeline.
    """
    return _build_pipeline_checkpoint(Path(folder), "inpaint", StableDiffusionInpaintPipeline, in_channels=9,
                                      seed=seed)


def _build_pipeline_checkpoint(folder: Path, kind: str, pipeline_class: type, *, in_channels: int,
                               seed: int) -> Path:
    def write(tmp: Path) -> None:
        tokenizer, text_encoder, vae = _shared_modules(tmp, seed)
        pipe = pipeline_class(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=_unet(in_channels=in_channels, seed=seed),
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp)
        write_vocab_files(tmp / "tokenizer")

    return _cached_build(folder, kind, seed, write)


def build_tiny_instruct_unet(folder: Path, *, seed: int = 0) -> Path:
    """An InstructPix2Pix UNet alone (8 channels: latents + image latents) at the folder's root.

    Loads with `UNet2DConditionModel.from_pretrained(folder)`; the generator plugs it into the base
    pipeline, sharing its VAE and text encoder as the real InstructPix2Pix shares SD 1.5's.
    """

    def write(tmp: Path) -> None:
        _unet(in_channels=8, seed=seed).save_pretrained(tmp)

    return _cached_build(Path(folder), "instruct-unet", seed, write)


def build_tiny_clipseg(folder: Path, *, seed: int = 0) -> Path:
    """A tiny CLIPSegForImageSegmentation and its CLIPSegProcessor (64 px input, 16 px patches)."""

    def write(tmp: Path) -> None:
        torch.manual_seed(seed)
        tokenizer = _tokenizer(tmp / "vocab")
        text = _text_config(tokenizer)
        config = CLIPSegConfig(
            text_config={k: v for k, v in text.to_dict().items() if k in _TEXT_KEYS},
            vision_config={
                "hidden_size": _HIDDEN,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 64,
                "patch_size": 16,
            },
            projection_dim=_HIDDEN,
            extract_layers=[0, 1],  # hidden_states[i + 1]: both layers of the 2-layer vision tower
            reduce_dim=16,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=32,
        )
        model = CLIPSegForImageSegmentation(config).eval()
        processor = CLIPSegProcessor(
            image_processor=ViTImageProcessor(
                size={"height": 64, "width": 64}, image_mean=_CLIP_MEAN, image_std=_CLIP_STD
            ),
            tokenizer=tokenizer,
        )
        shutil.rmtree(tmp / "vocab")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return _cached_build(Path(folder), "clipseg", seed, write)


def build_tiny_safety_checker(folder: Path, *, flags: SafetyVerdict = "red", seed: int = 0) -> Path:
    """A tiny StableDiffusionSafetyChecker and its CLIPImageProcessor (32 px) side by side in one
    folder, like CompVis/stable-diffusion-safety-checker.

    How it decides: the checker flags an image when the cosine similarity of its CLIP image embedding
    with one of its 17 concept embeddings is above that concept's weight (see pipeline/safety.py).
    Every concept embedding is set to the normalised embedding of a solid `SAFETY_REFERENCE` (red)
    image, as this random vision tower sees it; the weights then pick the verdict:

    - "red": concept 0 weighs `SAFETY_THRESHOLD` (0.95), the others 2.0 (above any cosine, so never
      reached). A solid red image (similarity 1.0) and near copies (another red shade, red with
      ±20 of noise: ≥ 0.999) are flagged; solid blue, green, white, black, grey and uniform noise
      (≤ 0.81 at seed 0, orange and magenta ≤ 0.88) are not.
    - "all": every weight is -2.0, below any cosine: every image is flagged.
    - "none": every weight is 2.0: no image is flagged.

    The 3 special-care weights are 2.0, so they never tighten the thresholds (see pipeline/safety.py).
    """
    if flags not in ("red", "all", "none"):
        raise ValueError(f"flags must be 'red', 'all' or 'none', got {flags!r}")

    def write(tmp: Path) -> None:
        torch.manual_seed(seed)
        config = CLIPConfig(
            # The checker builds no text tower; a small text config just keeps config.json small.
            text_config={"hidden_size": _HIDDEN, "intermediate_size": 37, "num_hidden_layers": 1,
                         "num_attention_heads": 4},
            vision_config={"hidden_size": _HIDDEN, "intermediate_size": 37, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
            projection_dim=_HIDDEN,
        )
        checker = StableDiffusionSafetyChecker(config).eval()
        processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_mean=_CLIP_MEAN, image_std=_CLIP_STD,
        )
        reference = Image.new("RGB", (64, 64), SAFETY_REFERENCE)
        with torch.no_grad():
            pixels = processor(images=[reference], return_tensors="pt").pixel_values
            embedding = checker.visual_projection(checker.vision_model(pixels).pooler_output)[0]
            checker.concept_embeds.copy_(torch.nn.functional.normalize(embedding, dim=0).expand(17, -1))
            weights = {"red": [SAFETY_THRESHOLD] + [2.0] * 16, "all": [-2.0] * 17, "none": [2.0] * 17}
            checker.concept_embeds_weights.copy_(torch.tensor(weights[flags]))
            checker.special_care_embeds_weights.fill_(2.0)
        checker.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return _cached_build(Path(folder), f"safety-checker-{flags}", seed, write)


# --- pieces -----------------------------------------------------------------------------------------

_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _byte_table() -> list[str]:
    """The GPT-2/CLIP byte → printable-character table: every byte gets a visible, non-space symbol."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def write_vocab_files(folder: Path, words: tuple[str, ...] = ()) -> None:
    """vocab.json + merges.txt: each byte alone and as a word end, so any text (emoji too) encodes;
    and BPE merges that make each of `words` (lower-case) one token.

    Without `words` no merges are needed: every word splits into bytes that are all in the vocabulary.
    A `tokenizer.json` written by `save_pretrained` is removed so that the folder looks like SD 1.5's
    and loads through the same vocab + merges path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    chars = _byte_table()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges: list[tuple[str, str]] = []
    for word in words:
        # Merge what the merges so far leave of the word, left to right. New merges rank below every
        # earlier one, so words already made whole keep their single token.
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _bpe(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word: merge the best-ranked adjacent pair until none is ranked."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(pieces) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(itertools.pairwise(pieces))]
        best, at = min(pairs)
        if best == len(rank):
            break
        pieces = [*pieces[:at], pieces[at] + pieces[at + 1], *pieces[at + 2:]]
    return pieces


def _tokenizer(scratch: Path) -> CLIPTokenizer:
    # Going through files (not an in-memory dict) exercises the same loading path as a real checkpoint.
    write_vocab_files(scratch)
    return CLIPTokenizer.from_pretrained(scratch, model_max_length=77)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _shared_modules(tmp: Path, seed: int) -> tuple[CLIPTokenizer, CLIPTextModel, AutoencoderKL]:
    """Tokenizer, text encoder and VAE, identical for every checkpoint built with the same seed."""
    torch.manual_seed(seed)
    tokenizer = _tokenizer(tmp / "_vocab")
    shutil.rmtree(tmp / "_vocab")
    text_encoder = CLIPTextModel(_text_config(tokenizer)).eval()
    # Factor-8 VAE like real SD (4 blocks → 3 downsamples); a factor-2 one is ~10x slower at 128 px.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    ).eval()
    return tokenizer, text_encoder, vae


def _unet(*, in_channels: int, seed: int) -> UNet2DConditionModel:
    # Seeded on its own so the UNet does not depend on how many numbers the other modules drew.
    torch.manual_seed(seed + in_channels)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
    ).eval()


def _scheduler() -> PNDMScheduler:
    # SD 1.5's own scheduler config, so "default" behaves as it does with the real checkpoint.
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )


def build_tiny_adapter(folder: Path, base: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """A random (non-identity) LoRA for the tiny checkpoint at `base`, in diffusers' LoRA format, as
    `refinery train` writes one: `<folder>/pytorch_lora_weights.safetensors`."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    def write(tmp: Path) -> None:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", local_files_only=True)
        torch.manual_seed(seed)
        # init_lora_weights=False: both matrices random, so the adapter visibly changes the images.
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)

    return _cached_build(Path(folder), "adapter", seed, write)


# --- caching ----------------------------------------------------------------------------------------


def _is_complete(folder: Path, kind: str, seed: int) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == {"kind": kind, "seed": seed, "format": FORMAT}


def _cached_build(folder: Path, kind: str, seed: int, write: Callable[[Path], None]) -> Path:
    if _is_complete(folder, kind, seed):
        return folder
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            # Never delete what we did not write: the folder may be someone's real checkpoint.
            raise FileExistsError(f"{folder} is not empty and holds no tiny-checkpoint marker")
        shutil.rmtree(folder)  # ours, but another kind, seed or format: rebuild it
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    started = time.perf_counter()
    try:
        write(tmp)
        marker = {"kind": kind, "seed": seed, "format": FORMAT}
        (tmp / MARKER).write_text(json.dumps(marker), encoding="utf-8")  # last: it means "complete"
        if folder.exists():
            folder.rmdir()  # empty (checked above); os.replace cannot overwrite a directory
        os.replace(tmp, folder)
    except OSError:
        # A concurrent builder may have won the rename; its result is as good as ours.
        if not _is_complete(folder, kind, seed):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built tiny %s checkpoint in %s (%.2f s)", kind, folder, time.perf_counter() - started)
    return folder
