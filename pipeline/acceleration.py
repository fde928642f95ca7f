"""GPU speed-ups applied to loaded Stable Diffusion pipelines, and the prompt-embedding cache.

`Acceleration` holds plain settings (the bot maps its `[performance]` section onto them);
`resolve` decides which speed-ups are active on a device; `Speedups` applies them to every
distinct UNet and VAE of a generator's pipelines and keeps their state. The mode pipelines made
with `from_pipe` hold the very same module objects, so each module is changed once, in place, and
every pipeline sees the change:

- fused QKV: `fuse_qkv_projections()` on the UNet and VAE (the modules' own method, which also sets
  `FusedAttnProcessor2_0`; the pipeline-level method would only flag the one pipeline it is called on).
  Self-attention runs one (q, k, v) matmul instead of three, cross-attention one (k, v) matmul.
- channels_last: conv weights (and so activations) in NHWC, the layout tensor-core convolutions want.
- torch.compile of the UNet and of the VAE decoder with `Module.compile()`, which compiles in place
  (a `torch.compile(unet)` wrapper would have to be put back into every pipeline, and would hide
  `unet.config` behind `_orig_mod`). Compiling is lazy: it happens at the first call of each shape,
  which is why the generator has a warm-up run. Static shapes (`dynamic=False`), no `fullgraph`, and
  at most `recompile_limit` compiled shapes: past that, new shapes run eagerly, they never fail (see
  `accelerate`).
- the inductor caches on disk (`compile_cache_dir`), so a restart reuses the compiled kernels.

Attention already goes through PyTorch's scaled-dot-product attention (diffusers' default processor
on torch 2), half precision is the generator's dtype setting, and the VAE decodes each batch in one
call (diffusers' default unless VAE slicing is enabled), so none of those needs code here.

The prompt cache (`PromptCache`) works on every device: a repeated prompt skips the text encoder.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.requests import GenerationRequest, Mode

log = logging.getLogger(__name__)

COMPILE = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Acceleration:
    """Which speed-ups to apply; the defaults match `[performance]` in config.toml."""

    channels_last: bool = True
    fuse_qkv: bool = True
    compile: str = "auto"  # auto: on the device types in `devices`; on: everywhere; off
    compile_mode: str = "default"  # a torch.compile mode; reduce-overhead adds CUDA graphs
    compile_cache_dir: str | None = None  # inductor's on-disk caches; None = torch's default (/tmp)
    warmup: bool = True  # DiffusersGenerator.warm_up runs the shape below (when something compiles)
    prompt_cache_size: int = 64  # text-encoder outputs kept; 0 = off
    # Where channels_last, fuse_qkv and compile="auto" apply. They pay off on CUDA; tests add "cpu"
    # to run the same code on the tiny model.
    devices: tuple[str, ...] = ("cuda",)
    compile_backend: str = "inductor"  # tests pass "eager"/"aot_eager": the wiring without codegen
    # The warm-up shape: what most jobs look like ([generation] defaults, [queue] batch_size).
    warmup_width: int = 512
    warmup_height: int = 512
    warmup_count: int = 4  # candidates per request
    warmup_batch: int = 1  # >1: also a call of this many requests, so batched calls are compiled too
    warmup_guidance: float = 7.5  # > 1 doubles the UNet batch (classifier-free guidance)
    warmup_steps: int = 3  # enough calls for CUDA graphs to be recorded (reduce-overhead)
    # Compiled shapes kept per compiled function (the UNets share one, the VAE decoder has its own);
    # a new shape past it runs eagerly (slower, never an error). torch's own default is 8.
    recompile_limit: int = 64

    def __post_init__(self) -> None:
        if self.compile not in COMPILE:
            raise ValueError(f"compile {self.compile!r} is not one of {COMPILE}")
        if self.compile_backend == "inductor" and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {self.compile_mode!r} is not one of {COMPILE_MODES}")
        if self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be 0 or more, got {self.prompt_cache_size}")
        for name in ("warmup_width", "warmup_height"):
            value = getattr(self, name)
            if value <= 0 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
        for name in ("warmup_count", "warmup_batch", "warmup_steps", "recompile_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Active:
    """What `resolve` turned on for one device."""

    channels_last: bool
    fuse_qkv: bool
    compile: bool
    prompt_cache: bool

    def describe(self) -> str:
        names = [name for name in ("channels_last", "fuse_qkv", "compile", "prompt_cache") if getattr(self, name)]
        return ",".join(names) or "none"


def resolve(settings: Acceleration, device: torch.device) -> Active:
    """The speed-ups that apply on `device`: the layout and compile ones only on `settings.devices`
    (compile="on" everywhere), the prompt cache everywhere."""
    here = device.type in settings.devices
    compile_on = settings.compile == "on" or (settings.compile == "auto" and here)
    return Active(
        channels_last=settings.channels_last and here,
        fuse_qkv=settings.fuse_qkv and here,
        compile=compile_on,
        prompt_cache=settings.prompt_cache_size > 0,
    )


class Speedups:
    """The speed-ups of one generator: what is active on its device, applied to its pipelines, and
    the state they keep (the prompt cache, the shapes compiled code has already run)."""

    def __init__(self, settings: Acceleration, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.active = resolve(settings, device)
        self.prompts = PromptCache(settings.prompt_cache_size) if self.active.prompt_cache else None
        self._compiled_shapes: set[tuple[Any, ...]] = set()
        self.warming = False  # set by the generator's warm_up: compiling then is the point, not news

    def apply(self, pipes: Iterable[Any]) -> None:
        """Apply the active speed-ups to every distinct UNet and VAE of `pipes`, once each, in place."""
        accelerate(pipes, self.settings, self.active)

    def use_cached_prompts(self, pipe: Any, kwargs: dict[str, Any], pairs: Sequence[tuple[str, str]],
                           guidance: float) -> None:
        """Replace `prompt`/`negative_prompt` in a pipeline call's `kwargs` by cached embeddings, one
        row per (prompt, negative) pair. Not for InstructPix2Pix, which encodes its own way."""
        if self.prompts is not None:
            del kwargs["prompt"], kwargs["negative_prompt"]
            kwargs.update(self.prompts.arguments(pipe, pairs, guidance))

    def will_compile(self, pipe: Any, width: int, height: int, images: int, guided: bool) -> bool:
        """Whether a run of this mode pipeline and shape will compile first (and so be slow): the
        queue tells the user so before it starts.

        The key is the mode pipeline, not its UNet: img2img shares the text2img UNet, but its
        latents come out of the VAE encoder with other strides than fresh noise, and compiled code
        guards on strides as well as sizes, so img2img at a warmed text2img size still compiles
        once. Compiling is static (`dynamic=False`), so each new key compiles exactly once (the UNet,
        and the VAE decoder when it has not met the size yet). Known misses, both rare: the
        4-channel inpainting fallback (no `inpaint_model`) at a size img2img has run is announced
        but compiles nothing; and once `recompile_limit` keys have compiled, the UNets (which share
        one compiled function) run new keys eagerly and no note is given, though the VAE decoder,
        having met fewer distinct shapes, may still compile a new size for a while."""
        return (self.active.compile and self._key(pipe, width, height, images, guided) not in self._compiled_shapes
                and len(self._compiled_shapes) < self.settings.recompile_limit)

    def note_run(self, pipe: Any, mode: str, width: int, height: int, images: int, guided: bool,
                 seconds: float) -> bool:
        """Log, and return True, when this run was the one to compile its key (`will_compile`, asked
        before it). A warning in a user's job (the warm-up covers only the usual shape), information
        during the warm-up."""
        if not self.will_compile(pipe, width, height, images, guided):
            return False
        self._compiled_shapes.add(self._key(pipe, width, height, images, guided))
        log.log(logging.INFO if self.warming else logging.WARNING,
                "first %s run at %dx%d, %d image(s), guidance %s: %.1f s, torch.compile included", mode, width,
                height, images, "on" if guided else "off", seconds)
        return True

    @staticmethod
    def _key(pipe: Any, width: int, height: int, images: int, guided: bool) -> tuple[Any, ...]:
        # id(pipe): the generator keeps its mode pipelines for its whole life, so an id is never reused.
        return id(pipe), width, height, images, guided

    def warmup_requests(self) -> list[GenerationRequest]:
        """The warm-up: one request of the usual shape, then `warmup_batch` of them when > 1 (one
        batched call). Empty when warm-up is off or would warm nothing (CPU without compile)."""
        settings = self.settings
        if not settings.warmup or (self.device.type == "cpu" and not self.active.compile):
            return []
        count = settings.warmup_count
        return [GenerationRequest(prompt="warm-up", seeds=tuple(range(k * count, (k + 1) * count)),
                                  steps=settings.warmup_steps, guidance=settings.warmup_guidance,
                                  width=settings.warmup_width, height=settings.warmup_height)
                for k in range(settings.warmup_batch)]


def guided(request: GenerationRequest) -> bool:
    """Whether the pipeline runs classifier-free guidance for `request`, which doubles the UNet's
    batch (triples it for InstructPix2Pix): part of the shape that compiled code is made for."""
    if request.mode is Mode.INSTRUCT:  # the pipeline's own test
        return request.guidance > 1 and request.image_guidance >= 1
    return request.guidance > 1


def accelerate(pipes: Iterable[Any], settings: Acceleration, active: Active) -> None:
    """Apply `active` to every distinct UNet and VAE of `pipes`, once each, in place."""
    pipes = list(pipes)
    unets, vaes = _distinct(pipes, "unet"), _distinct(pipes, "vae")
    started = time.perf_counter()
    if active.fuse_qkv:  # first: it makes new Linear layers, which the later steps must see
        for module in (*unets, *vaes):
            module.fuse_qkv_projections()
    if active.channels_last:
        for module in (*unets, *vaes):
            module.to(memory_format=torch.channels_last)
    if active.compile:
        use_compile_cache(settings.compile_cache_dir)
        # No fullgraph=True: with it, a new shape past the recompile limit is a hard error
        # (FailOnRecompileLimitHit) in a user's job; without it, that shape runs eagerly. The limit
        # is this torch.compile call's own, so other compiled code in the process keeps torch's.
        # dynamic=False: each new shape gets its own static graph, compiled once. torch's default
        # (automatic dynamic shapes) recompiles at the second size seen into a symbolic-shape graph
        # that then serves every size, the warmed one included (the newest entry is tried first),
        # with generic kernels in place of shape-specialised ones; and whether a run compiles would
        # depend on the order of earlier runs, so the "compiling" note could not be told in advance.
        options: dict[str, Any] = {"backend": settings.compile_backend, "dynamic": False,
                                   "recompile_limit": settings.recompile_limit}
        # torch also caps all entries of one function at accumulated_recompile_limit (256): not below ours.
        import torch._dynamo.config as dynamo  # here, as in use_compile_cache: only compiling pays the import

        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, settings.recompile_limit)
        if settings.compile_backend == "inductor":
            options["mode"] = settings.compile_mode
        for unet in unets:
            unet.compile(**options)
        for vae in vaes:
            # The decoder is where the VAE's time goes; encode (img2img, inpaint) runs once per job.
            vae.decoder.compile(**options)
    log.info("speed-ups: %s (%d UNet, %d VAE, %.2f s%s)", active.describe(), len(unets), len(vaes),
             time.perf_counter() - started, f"; compile mode {settings.compile_mode}" if active.compile else "")


def use_compile_cache(folder: str | None) -> None:
    """Keep inductor's caches in `folder`, so a restart (or another worker sharing the folder) skips
    code generation and autotuning.

    What torch 2.13 offers, and why this is enough: `TORCHINDUCTOR_CACHE_DIR` is read each time a
    cache path is built (torch._inductor.runtime.cache_dir_utils.cache_dir), and under it live the
    FX graph cache (`torch._inductor.config.fx_graph_cache`, on by default), the AOTAutograd cache
    (`torch._functorch.config.enable_autograd_cache`, on), the autotuning results
    (`autotune_local_cache`, on), the compiled Triton kernels (`<dir>/triton/<device>` unless
    TRITON_CACHE_DIR is set) and dynamo's automatic-dynamic profile (`automatic_dynamic_local_pgo`).
    A second start still re-traces the model with dynamo (seconds), but loads the compiled code.
    `torch.compiler.save_cache_artifacts`/`load_cache_artifacts` (the "mega-cache") packs the same
    artifacts into one blob for machines that do not share a disk; with one folder per machine (or
    a shared one) the folder itself is the cache, so it is not used here.
    The setting is process-wide, as is torch's cache; the generator is the process's one model.
    """
    if not folder:
        return
    # Imported here: a second of import time that only a compiling process should pay.
    import torch._functorch.config
    import torch._inductor.config

    os.makedirs(folder, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(folder)
    torch._inductor.config.fx_graph_cache = True
    torch._inductor.config.autotune_local_cache = True
    torch._functorch.config.enable_autograd_cache = True


def _distinct(pipes: Sequence[Any], name: str) -> list[Any]:
    found: dict[int, Any] = {}
    for pipe in pipes:
        module = getattr(pipe, name, None)
        if module is not None:
            found.setdefault(id(module), module)
    return list(found.values())


class PromptCache:
    """The last `size` text-encoder outputs, least recently used first out.

    A key is (text encoder, prompt, negative prompt, classifier-free guidance on?); a value is what
    the pipeline's own `encode_prompt` returns for one image, so the pipeline gets exactly the
    tensors it would have computed (bit-identical for a single request; a batch of different prompts
    is encoded one prompt at a time, as single requests are). Not thread-safe: call it under the
    generator's lock, as the pipeline call is.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[int, str, str, bool], tuple[torch.Tensor, torch.Tensor | None]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, pipe: Any, prompt: str, negative: str,
               guidance: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt_embeds, negative_prompt_embeds or None without guidance) for one image."""
        # The pipelines' own test: no unconditional pass at guidance ≤ 1 or for guidance-distilled UNets.
        guided = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
        key = (id(pipe.text_encoder), prompt, negative, guided)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        with torch.no_grad():  # encode_prompt is not under the pipeline call's no_grad here
            embeds = pipe.encode_prompt(prompt, pipe._execution_device, 1, guided, negative_prompt=negative or None)
        self._entries[key] = embeds
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return embeds

    def arguments(self, pipe: Any, pairs: Sequence[tuple[str, str]], guidance: float) -> dict[str, torch.Tensor]:
        """`prompt_embeds` (and `negative_prompt_embeds`) for a pipeline call, in place of `prompt`
        and `negative_prompt`: one row per (prompt, negative) pair, in order. The pipeline repeats
        the rows `num_images_per_prompt` times, as it does with strings."""
        encoded = [self.encode(pipe, prompt, negative, guidance) for prompt, negative in pairs]
        arguments = {"prompt_embeds": torch.cat([positive for positive, _ in encoded])}
        negatives = [negative for _, negative in encoded]
        if all(negative is not None for negative in negatives):
            arguments["negative_prompt_embeds"] = torch.cat(negatives)  # type: ignore[arg-type]
        return arguments
