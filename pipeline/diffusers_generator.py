"""Stable Diffusion 1.x/2.x through Hugging Face diffusers, behind the `Generator` protocol.

One text-to-image pipeline is loaded from `GeneratorSettings.model`; the other modes reuse its
modules with `from_pipe` (no extra memory): IMAGE is StableDiffusionImg2ImgPipeline; INPAINT is
StableDiffusionInpaintPipeline with the 9-channel UNet of `inpaint_model`, or with the base 4-channel
UNet when none is configured; INSTRUCT is StableDiffusionInstructPix2PixPipeline with the 8-channel
UNet of `instruct_model`, and raises ModelNotConfigured when none is.

Every `from_pipe` passes the dtype: without it diffusers casts the shared modules — the text
pipeline's own — to float32, silently doubling memory and time on CUDA.

A plugged-in UNet shares the base VAE and text encoder when its cross-attention width matches the
base text encoder (true for timbrooks/instruct-pix2pix and runwayml/stable-diffusion-inpainting over
SD 1.5, which were fine-tuned with both frozen); otherwise that mode loads its whole checkpoint.

Reproducibility: each candidate gets its own CPU `torch.Generator` seeded with its seed, so a seed
means the same starting noise on CPU, CUDA and MPS (CPU generators are diffusers' advice for
portable seeds; noise is drawn on the CPU and moved, a negligible cost for latents).

Speed-ups (fused QKV, channels_last, torch.compile, the prompt-embedding cache) live in
pipeline/acceleration.py; `load()` applies them to every pipeline, and `warm_up()` runs the usual
shape once so that compiling happens at start-up, not in a user's job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from pipeline.acceleration import Acceleration, Speedups, guided
from pipeline.adapters import LoadedAdapters
from pipeline.call_arguments import call_arguments, check_request
from pipeline.checkpoints import load_unet, public_model_id, revision_of
from pipeline.masks import ClipSegMasker, encode_png
from pipeline.model_errors import explained
from pipeline.requests import AdapterRef, GenerationRequest, GenerationResult, Mode, ProgressCallback
from pipeline.safety import ImageSafetyChecker

log = logging.getLogger(__name__)

SCHEDULERS: dict[str, Any] = {
    "default": None,  # whatever the checkpoint's scheduler/ folder says (PNDM for SD 1.5)
    "ddim": DDIMScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,  # algorithm_type defaults to "dpmsolver++"
}
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


class ModelNotConfigured(ValueError):
    """A mode or helper needs a model that the settings do not name; the caller picks a fallback."""

    def __init__(self, setting: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs GeneratorSettings.{setting}, which is not set")
        self.setting = setting


@dataclass(frozen=True)
class GeneratorSettings:
    """Which model to load and how. `model` and the *_model fields are hub ids or local folders."""

    model: str
    revision: str | None = None  # of `model` only; the other models load their default branch
    scheduler: str = "default"  # one of SCHEDULERS
    device: str = "auto"  # auto: cuda, else mps, else cpu
    dtype: str = "auto"  # auto: float16 on CUDA, float32 elsewhere
    local_files_only: bool = False
    instruct_model: str | None = None  # InstructPix2Pix checkpoint or bare 8-channel UNet folder
    inpaint_model: str | None = None  # 9-channel inpainting checkpoint or bare UNet folder
    clipseg_model: str | None = None  # CLIPSegForImageSegmentation, for masks from a phrase
    cpu_threads: int | None = None  # torch.set_num_threads at load: process-wide
    acceleration: Acceleration = field(default_factory=Acceleration)  # speed-ups, see pipeline/acceleration.py
    safety_checker: str | None = None  # StableDiffusionSafetyChecker: flags images (result.nsfw)
    models_dir: str | None = None  # trained LoRA adapters, <models_dir>/<name>/ (see pipeline/adapters.py)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is empty: give a hub id or a local checkpoint folder")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {self.scheduler!r} is not one of {sorted(SCHEDULERS)}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {DEVICES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, got {self.cpu_threads}")


class DiffusersGenerator:
    """Makes candidates with diffusers. Blocking; runs are serialised by a lock because the mode
    pipelines share one scheduler object, whose state a second concurrent run would corrupt.

    `model_revision` (also on every result) is, in order of preference: the commit of a hub cache
    snapshot (the folder name under `snapshots/`, or the cached snapshot that a hub id resolved to),
    `"sha256:"` + 12 hex digits of the content of a local folder (every file but dot-files, in path
    order — hashing a 4 GB SD 1.5 folder takes a few seconds, once, at load), or the `revision`
    setting as given.

    Regenerating candidate k: `regenerate(request, k)` runs the request with `seeds=(seed_k,)`. That
    is bit-exact with another batch-1 run, but only within tolerance of the batched original (batched
    kernels round differently: ≤ 4e-6 before uint8, ~0.01 % of pixel values off by one on CPU).
    Compare regenerated images with a tolerance, or keep the original PNGs.
    """

    can_batch = True  # generate_batch runs compatible text-to-image requests as one pipeline call

    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings
        self.model_id = public_model_id(settings.model)
        self.model_revision = ""
        self.device = _resolve_device(settings.device)
        self.dtype: torch.dtype = DTYPES[settings.dtype] or (
            torch.float16 if self.device.type == "cuda" else torch.float32
        )
        self._pipes: dict[Mode, Any] = {}
        self._mode_models: dict[Mode, tuple[str, str]] = {}  # mode → (model, revision) when not base
        self._masker: ClipSegMasker | None = None
        self._safety: ImageSafetyChecker | None = None
        self._adapters: LoadedAdapters | None = None
        self._lock = threading.Lock()
        self.speedups = Speedups(settings.acceleration, self.device)
        self.warmup_s: float | None = None  # warm_up's first run (compiling included) and second run
        self.warm_s: float | None = None

    # --- loading --------------------------------------------------------------------------------

    def load(self) -> DiffusersGenerator:
        """Load every configured mode now, so a bad setting fails at start-up, not mid-round."""
        with self._lock:
            if self._pipes:
                return self
            started = time.perf_counter()
            settings = self.settings
            if settings.cpu_threads is not None:
                torch.set_num_threads(settings.cpu_threads)
            diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars
            with explained("model.id", settings.model, local_files_only=settings.local_files_only):
                text = StableDiffusionPipeline.from_pretrained(
                    settings.model,
                    revision=settings.revision,
                    dtype=self.dtype,
                    local_files_only=settings.local_files_only,
                    **_NO_SAFETY,
                )
            self._prepare(text)
            pipes: dict[Mode, Any] = {
                Mode.TEXT: text,
                Mode.IMAGE: StableDiffusionImg2ImgPipeline.from_pipe(text, dtype=self.dtype),
            }
            plugs = (
                (Mode.INPAINT, StableDiffusionInpaintPipeline, settings.inpaint_model, 9),
                (Mode.INSTRUCT, StableDiffusionInstructPix2PixPipeline, settings.instruct_model, 8),
            )
            for mode, pipeline_class, model, channels in plugs:
                if model:
                    with explained(f"model.{mode.value}_model", model, local_files_only=settings.local_files_only):
                        pipes[mode] = self._plug(text, pipeline_class, model, channels)
                    self._mode_models[mode] = (model, revision_of(model))
            if Mode.INPAINT not in pipes:
                # The 4-channel UNet inpaints by blending the noised original back in outside the mask.
                pipes[Mode.INPAINT] = StableDiffusionInpaintPipeline.from_pipe(text, dtype=self.dtype)
            for pipe in pipes.values():
                pipe.set_progress_bar_config(disable=True)
            self.model_revision = revision_of(settings.model, settings.revision)
            self.speedups.apply(pipes.values())
            if settings.safety_checker:
                with explained("moderation.safety_checker", settings.safety_checker,
                               local_files_only=settings.local_files_only):
                    self._safety = ImageSafetyChecker(settings.safety_checker, device=self.device, dtype=self.dtype,
                                                      local_files_only=settings.local_files_only)
            self._adapters = LoadedAdapters(text, Path(settings.models_dir) if settings.models_dir else None)
            self._pipes = pipes
            log.info(
                "loaded %s (%s) on %s/%s, modes %s, in %.2f s",
                settings.model,
                self.model_revision,
                self.device,
                self.dtype,
                ",".join(sorted(pipes)),
                time.perf_counter() - started,
            )
        return self

    def _prepare(self, pipe: Any) -> None:
        scheduler_class = SCHEDULERS[self.settings.scheduler]
        if scheduler_class is not None:
            overrides = {}
            if scheduler_class is DDIMScheduler and "clip_sample" not in pipe.scheduler.config:
                # DDIM defaults to clipping x0 to [-1, 1], right for pixels and wrong for SD latents.
                overrides["clip_sample"] = False
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **overrides)
        pipe.to(self.device)

    def _plug(self, text: Any, pipeline_class: Any, model: str, in_channels: int) -> Any:
        """The base pipeline with `model`'s UNet, or `model` whole when the UNet cannot share."""
        unet = load_unet(model, dtype=self.dtype, local_files_only=self.settings.local_files_only)
        if unet.config.in_channels != in_channels:
            raise ValueError(
                f"{model}: UNet has {unet.config.in_channels} input channels, "
                f"{pipeline_class.__name__} needs {in_channels}"
            )
        if unet.config.cross_attention_dim == text.text_encoder.config.hidden_size:
            return pipeline_class.from_pipe(text, unet=unet.to(self.device), dtype=self.dtype)
        log.info("%s does not fit the base text encoder; loading it whole", model)
        pipe = pipeline_class.from_pretrained(
            model, dtype=self.dtype, local_files_only=self.settings.local_files_only, **_NO_SAFETY
        )
        self._prepare(pipe)
        return pipe

    def masker(self) -> ClipSegMasker:
        """The CLIPSeg masker of `clipseg_model`, loaded on first use (it is small; CPU is enough)."""
        if not self.settings.clipseg_model:
            raise ModelNotConfigured("clipseg_model", "a mask from a phrase")
        if self._masker is None:
            with explained("model.clipseg_model", self.settings.clipseg_model,
                           local_files_only=self.settings.local_files_only):
                self._masker = ClipSegMasker(
                    self.settings.clipseg_model, local_files_only=self.settings.local_files_only
                )
        return self._masker

    # --- generating -----------------------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, progress: ProgressCallback | None = None
    ) -> GenerationResult:
        """One PNG per seed, in seed order. `progress(step, total)` is called after each denoising
        step, with `total` the steps this mode really runs (img2img at strength s runs about s × steps;
        SD 1.5's default PNDM runs steps + 1). If `progress` raises (GenerationCancelled, say), the run
        stops before decoding, the exception propagates, and the generator stays usable.
        """
        check_request(request)
        if len(set(request.arms)) > 1:
            return self._generate_arms(request, progress)
        self.load()
        pipe = self._pipes.get(request.mode)
        if pipe is None:  # only INSTRUCT can be missing
            raise ModelNotConfigured("instruct_model", "an instruct edit (InstructPix2Pix)")
        started = time.perf_counter()
        kwargs = call_arguments(request, progress)
        images, steps_run = self._run(pipe, kwargs, [(request.prompt, request.negative_prompt)], request)
        if request.mode is Mode.INPAINT:
            # The VAE round trip blurs and shifts what it does not repaint; paste the original back
            # outside the mask so "keep this" really keeps it.
            init, mask = kwargs["image"], kwargs["mask_image"]
            images = [Image.composite(image.convert("RGB"), init, mask) for image in images]
        nsfw = self._safety.check(images) if self._safety is not None else ()  # one call per round
        return self._result(request, pipe, images, steps_run, time.perf_counter() - started, nsfw=nsfw)

    def generate_batch(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationResult]:
        """Text-to-image requests that differ only in prompt, negative prompt and seeds, made by ONE
        pipeline call and split back per request (for the Redis worker's batching). Each candidate
        keeps its own seeded generator, so each result equals its request run alone within tolerance
        (batched kernels round differently, see the class docstring). `progress` gets the shared
        steps; `elapsed_s` is the whole call's. ValueError names the first field that differs.
        """
        if len(requests) == 1:
            return [self.generate(requests[0], progress)]
        first = requests[0]
        for request in requests:
            check_request(request)
            if request.mode is not Mode.TEXT:
                raise ValueError(f"only text2img requests can share a call, got mode {request.mode.value}")
            for name in ("steps", "guidance", "width", "height"):
                if getattr(request, name) != getattr(first, name):
                    raise ValueError(f"requests differ in {name}: {getattr(first, name)!r} and "
                                     f"{getattr(request, name)!r}")
        self.load()
        pipe = self._pipes[Mode.TEXT]
        started = time.perf_counter()
        kwargs = call_arguments(first, progress)
        pairs = [(r.prompt, r.negative_prompt) for r in requests for _ in r.seeds]  # one per candidate
        kwargs.update(
            # "" is what diffusers uses for a missing negative prompt anyway.
            prompt=[prompt for prompt, _ in pairs],
            negative_prompt=[negative for _, negative in pairs],
            num_images_per_prompt=1,
            generator=[torch.Generator("cpu").manual_seed(seed) for r in requests for seed in r.seeds],
        )
        images, steps_run = self._run(pipe, kwargs, pairs, first)
        nsfw = self._safety.check(images) if self._safety is not None else ()  # one call per batch
        elapsed = time.perf_counter() - started
        results, start = [], 0
        for request in requests:
            part = images[start : start + request.count]
            flags = nsfw[start : start + request.count]
            results.append(self._result(request, pipe, part, steps_run, elapsed, batch=len(requests), nsfw=flags))
            start += request.count
        return results

    def _generate_arms(self, request: GenerationRequest, progress: ProgressCallback | None) -> GenerationResult:
        """An arena round: the base candidates and the adapter's as two runs, put back in their positions.
        Progress counts both runs as one run of the request's own steps (2 steps done count 1), so it reads
        "step x/N" with the N of an ordinary round of the same settings: the two runs must not show."""
        arms = request.arms
        parts: list[tuple[list[int], GenerationResult]] = []
        for offset, with_adapter in enumerate((False, True)):
            where = [i for i, arm in enumerate(arms) if arm is with_adapter]
            part = replace(request, seeds=tuple(request.seeds[i] for i in where), arms=(),
                           adapter=request.adapter if with_adapter else None)

            def report(step: int, total: int, offset: int = offset) -> None:
                if progress is not None:
                    progress((offset * total + step + 1) // 2, total)  # rounded up: 1/N at the first step

            parts.append((where, self.generate(part, report)))
        images: list[bytes] = [b""] * len(arms)
        nsfw: list[bool] = [False] * len(arms)
        for where, result in parts:
            for slot, index in enumerate(where):
                images[index] = result.images[slot]
                if result.nsfw:
                    nsfw[index] = result.nsfw[slot]
        checked = all(result.nsfw for _, result in parts)
        last = parts[-1][1]
        return replace(last, images=tuple(images), seeds=request.seeds, nsfw=tuple(nsfw) if checked else (),
                       elapsed_s=sum(result.elapsed_s for _, result in parts),
                       extras={**last.extras, "arms": "".join("a" if arm else "b" for arm in arms)})

    def _run(self, pipe: Any, kwargs: dict[str, Any], pairs: list[tuple[str, str]],
             request: GenerationRequest) -> tuple[list[Any], int]:
        """One pipeline call under the lock, with cached prompt embeddings (one row per pair)."""
        adapter: AdapterRef | None = request.adapter if request.uses_adapter(0) else None
        with self._lock:
            assert self._adapters is not None  # load() made it
            self._adapters.activate(adapter)  # under the lock: the UNet's adapter state is shared
            started = time.perf_counter()
            if pipe is not self._pipes.get(Mode.INSTRUCT):  # InstructPix2Pix encodes its prompts its own way
                self.speedups.use_cached_prompts(pipe, kwargs, pairs, request.guidance)
            images = pipe(**kwargs).images
            self.speedups.note_run(pipe, request.mode.value, request.width, request.height, len(images),
                                   guided(request), time.perf_counter() - started)
            return images, pipe.num_timesteps

    def first_run_compiles(self, requests: Sequence[GenerationRequest]) -> bool:
        """Whether running `requests` (one call: one request, or a batch) will compile first, because
        compiled code has not met that shape yet (see `Speedups.will_compile`)."""
        first = requests[0]
        pipe = self._pipes.get(first.mode)
        if pipe is None:
            return False
        return self.speedups.will_compile(pipe, first.width, first.height, sum(r.count for r in requests),
                                          guided(first))

    def warm_up(self) -> float | None:
        """Run the usual shape (`Speedups.warmup_requests`) twice, so that torch.compile, CUDA graphs
        and CUDA's own start-up happen now and not in a user's job. Sets `warmup_s` (first run,
        compiling included) and `warm_s` (second run); returns `warmup_s`, or None having run nothing
        when warm-up is off or would warm nothing (CPU without compile)."""
        self.load()
        requests = self.speedups.warmup_requests()
        if not requests:
            return None
        times = []
        self.speedups.warming = True
        try:
            for _ in range(2):
                started = time.perf_counter()
                self.generate(requests[0])
                if len(requests) > 1:
                    self.generate_batch(requests)
                times.append(time.perf_counter() - started)
        finally:
            self.speedups.warming = False
        self.warmup_s, self.warm_s = times
        first = requests[0]
        log.info("warm-up at %dx%d, %d candidates, batch %d (%s): %.2f s, then %.2f s", first.width, first.height,
                 first.count, len(requests), self.speedups.active.describe(), self.warmup_s, self.warm_s)
        return self.warmup_s

    def _result(self, request: GenerationRequest, pipe: Any, images: list[Any], steps_run: int,
                elapsed_s: float, batch: int = 1, nsfw: tuple[bool, ...] = ()) -> GenerationResult:
        extras = {
            "mode": request.mode.value,
            "denoise_steps": str(steps_run),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if batch > 1:
            extras["batch"] = str(batch)  # requests that shared the pipeline call
        if request.mode in self._mode_models:
            model, revision = self._mode_models[request.mode]
            extras.update(mode_model=model, mode_model_revision=revision)
        if request.adapter is not None and request.uses_adapter(0):
            extras["adapter"] = request.adapter.label
        return GenerationResult(
            images=tuple(encode_png(image) for image in images),
            seeds=request.seeds,
            model_id=self.model_id,
            scheduler=type(pipe.scheduler).__name__,
            elapsed_s=elapsed_s,
            model_revision=self.model_revision,
            extras=extras,
            nsfw=nsfw,
        )

    def regenerate(
        self, request: GenerationRequest, index: int, progress: ProgressCallback | None = None
    ) -> GenerationResult:
        """Candidate `index` alone (batch 1): equal to the batched one within tolerance, see class."""
        if not 0 <= index < len(request.seeds):
            raise ValueError(f"index {index} is out of range for {len(request.seeds)} seeds")
        return self.generate(replace(request, seeds=(request.seeds[index],)), progress)


# --- helpers ------------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
