"""Typed, validated configuration: `config.toml` read with tomllib into frozen dataclasses.

Unknown keys and values of the wrong type or out of range are errors that name the key.
Secrets never live here: they come from the environment (see `Secrets`).
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration file is missing, malformed, or holds a bad value (the key is named)."""


@dataclass(frozen=True)
class ModelConfig:
    id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or a local folder
    revision: str = ""
    local_files_only: bool = False
    scheduler: str = "dpm++"
    device: str = "auto"
    dtype: str = "auto"
    instruct_model: str = ""
    inpaint_model: str = ""
    clipseg_model: str = ""
    cpu_threads: int = 0  # 0 = torch's default
    adapter: str = ""  # a LoRA trained by `refinery train` (a folder name under models_dir) used from start-up
    adapter_weight: float = 1.0
    models_dir: str = ""  # trained adapters; empty = <data_dir>/models

    def check(self) -> None:
        _in_range("model.adapter_weight", self.adapter_weight, 0.0, 2.0)
        _one_of("model.scheduler", self.scheduler, ("default", "ddim", "euler_a", "dpm++"))
        _one_of("model.device", self.device, ("auto", "cpu", "cuda", "mps"))
        _one_of("model.dtype", self.dtype, ("auto", "float16", "bfloat16", "float32"))
        _require(bool(self.id.strip()), "model.id", self.id, "must name a hub id or a local folder")
        _in_range("model.cpu_threads", self.cpu_threads, 0, 256)


@dataclass(frozen=True)
class GenerationConfig:
    candidates: int = 4
    default_steps: int = 25
    min_steps: int = 1
    max_steps: int = 60
    default_guidance: float = 7.5
    max_guidance: float = 20.0
    default_width: int = 512
    default_height: int = 512
    min_size: int = 64
    max_size: int = 768
    max_prompt_length: int = 500
    progress_interval_s: float = 1.5

    def check(self) -> None:
        _in_range("generation.candidates", self.candidates, 1, 10)
        _in_range("generation.min_steps", self.min_steps, 1, 1000)
        _in_range("generation.max_steps", self.max_steps, self.min_steps, 1000)
        _in_range("generation.default_steps", self.default_steps, self.min_steps, self.max_steps)
        _in_range("generation.max_guidance", self.max_guidance, 0.0, 100.0)
        _in_range("generation.default_guidance", self.default_guidance, 0.0, self.max_guidance)
        _in_range("generation.min_size", self.min_size, 8, 4096)
        _in_range("generation.max_size", self.max_size, self.min_size, 4096)
        for key in ("min_size", "max_size", "default_width", "default_height"):
            value = getattr(self, key)
            _require(value % 8 == 0, f"generation.{key}", value, "must be a multiple of 8")
        _in_range("generation.default_width", self.default_width, self.min_size, self.max_size)
        _in_range("generation.default_height", self.default_height, self.min_size, self.max_size)
        _in_range("generation.max_prompt_length", self.max_prompt_length, 1, 6000)
        _in_range("generation.progress_interval_s", self.progress_interval_s, 0.0, 60.0)


@dataclass(frozen=True)
class DiscordConfig:
    api_base: str = ""  # empty = Discord itself; set to sit behind a REST proxy
    gateway_url: str = ""  # empty = Discord itself
    prompt_channels: tuple[str, ...] = ()  # channel names or ids where plain messages are prompts
    respond_to_mentions: bool = True  # "@Refinery a red fox" works in any channel
    sync_commands: bool = True
    guild_ready_timeout_s: float = 2.0
    stop_timeout_s: float = 10.0  # on SIGTERM: at most this long to tell waiting users and disconnect

    def check(self) -> None:
        for key in ("api_base", "gateway_url"):
            value = getattr(self, key)
            ok = not value or value.startswith(("http://", "https://", "ws://", "wss://"))
            _require(ok, f"discord.{key}", value, "must be empty or a URL")
        _in_range("discord.guild_ready_timeout_s", self.guild_ready_timeout_s, 0.0, 60.0)
        _in_range("discord.stop_timeout_s", self.stop_timeout_s, 0.0, 300.0)


@dataclass(frozen=True)
class VotesConfig:
    emoji: tuple[str, ...] = ("1️⃣", "2️⃣", "3️⃣", "4️⃣")  # one per candidate, in order
    none_emoji: str = "❌"  # "none of these is good"
    seed_reactions: bool = True  # the bot adds the vote emoji itself
    # On start-up (and a resume after a gap) compare rounds of the last this many days with the reactions
    # Discord shows, journaling what changed while the bot was away; 0 = off.
    reconcile_days: float = 3.0
    reconcile_pace_s: float = 0.25  # between reconciliation's REST requests, to leave room for live traffic

    def check(self) -> None:
        _in_range("votes.reconcile_days", self.reconcile_days, 0.0, 365.0)
        _in_range("votes.reconcile_pace_s", self.reconcile_pace_s, 0.0, 60.0)
        _require(len(set(self.emoji)) == len(self.emoji), "votes.emoji", self.emoji, "must be distinct")
        _require(self.none_emoji not in self.emoji, "votes.none_emoji", self.none_emoji,
                 "must differ from the candidate emoji")


@dataclass(frozen=True)
class StorageConfig:
    data_dir: str = "data"  # relative paths are relative to the config file's folder
    journal: str = ""  # default: <data_dir>/journal.sqlite3
    oxen_repo: str = ""  # default: <data_dir>/oxen
    commit_interval_s: float = 10.0
    commit_batch: int = 1000
    remote: str = ""  # Oxen remote URL; empty = local only
    push_interval_s: float = 300.0
    stop_flush_s: float = 30.0  # on SIGTERM: at most this long for the writer to commit what is journaled

    def check(self) -> None:
        _in_range("storage.commit_interval_s", self.commit_interval_s, 0.05, 86400.0)
        _in_range("storage.commit_batch", self.commit_batch, 1, 1_000_000)
        _in_range("storage.push_interval_s", self.push_interval_s, 1.0, 86400.0)
        _in_range("storage.stop_flush_s", self.stop_flush_s, 0.0, 3600.0)


@dataclass(frozen=True)
class RefineConfig:
    strength: float = 0.6  # img2img / inpaint strength for replies (0 = keep, 1 = ignore the image)
    instruction_weight: float = 1.0  # weight of the reply's words against the round's prompt
    image_guidance: float = 1.5  # InstructPix2Pix: how closely to keep the source image
    variation_strength: float = 0.35  # V1–V4 buttons
    upscale_factor: float = 2.0  # U1–U4 buttons: re-run at this multiple of the size (capped at max_size)
    upscale_strength: float = 0.3
    buttons_for: str = "everyone"  # "everyone" or "requester" (the round's requester only)
    max_mask_bytes: int = 8_000_000  # an attached mask larger than this is refused
    max_mask_pixels: int = 16_000_000  # width × height; guards against decompression bombs

    def check(self) -> None:
        for key in ("strength", "variation_strength", "upscale_strength"):
            value = getattr(self, key)
            _require(0.0 < value <= 1.0, f"refine.{key}", value, "must be in (0, 1]")
        _in_range("refine.instruction_weight", self.instruction_weight, 0.1, 3.0)
        _in_range("refine.image_guidance", self.image_guidance, 0.0, 10.0)
        _in_range("refine.upscale_factor", self.upscale_factor, 1.0, 4.0)
        _one_of("refine.buttons_for", self.buttons_for, ("everyone", "requester"))
        _in_range("refine.max_mask_bytes", self.max_mask_bytes, 1024, 100_000_000)
        _in_range("refine.max_mask_pixels", self.max_mask_pixels, 64, 400_000_000)


@dataclass(frozen=True)
class QueueConfig:
    max_depth: int = 100  # jobs waiting in all
    max_per_user: int = 3  # jobs waiting or running per user
    cooldown_s: float = 0.0  # minimum gap between one user's submissions
    batch_size: int = 4  # compatible waiting jobs (same size, steps, guidance) run as one pipeline call
    redis_url: str = ""  # empty = in-process queue
    redis_prefix: str = "refinery"  # key prefix shared by the bot and its `refinery worker` processes
    cancel_emoji: str = "❌"  # the requester's (or a moderator's) reaction with it on an acknowledgement cancels

    def check(self) -> None:
        _in_range("queue.max_depth", self.max_depth, 1, 100_000)
        _in_range("queue.max_per_user", self.max_per_user, 1, 1000)
        _in_range("queue.cooldown_s", self.cooldown_s, 0.0, 86400.0)
        _in_range("queue.batch_size", self.batch_size, 1, 64)
        _require(bool(self.cancel_emoji.strip()), "queue.cancel_emoji", self.cancel_emoji, "must not be empty")


@dataclass(frozen=True)
class ModerationConfig:
    moderator_roles: tuple[str, ...] = ()  # role names or ids; Manage Server / Administrator always count
    flag_emoji: str = "🚩"  # a moderator's reaction with it on a round flags the round
    remove_emoji: str = "🚫"  # a moderator's reaction with it on a round deletes the round's message
    banned_words: tuple[str, ...] = ()  # prompts/replies containing one are refused (see bot/wordfilter.py)
    events_per_minute: int = 30  # reactions + replies per user per minute; the rest are dropped
    nsfw_words: tuple[str, ...] = ()  # prompts naming one are NSFW: allowed as is only in NSFW channels
    nsfw_action: str = "spoiler"  # outside NSFW channels: "spoiler" (images sent as spoilers) or "refuse"
    safety_checker: str = ""  # StableDiffusionSafetyChecker (hub id or folder) that flags images; empty = off

    def check(self) -> None:
        for role in self.moderator_roles:
            _require(bool(role.strip()), "moderation.moderator_roles", self.moderator_roles,
                     "must not hold an empty role name")
        _require(bool(self.flag_emoji.strip()), "moderation.flag_emoji", self.flag_emoji, "must not be empty")
        _require(bool(self.remove_emoji.strip()), "moderation.remove_emoji", self.remove_emoji,
                 "must not be empty")
        _require(self.remove_emoji != self.flag_emoji, "moderation.remove_emoji", self.remove_emoji,
                 "must differ from moderation.flag_emoji")
        for phrase in self.banned_words:
            _require(bool(phrase.strip()), "moderation.banned_words", self.banned_words,
                     "must not hold an empty phrase")
        _in_range("moderation.events_per_minute", self.events_per_minute, 1, 100_000)
        _one_of("moderation.nsfw_action", self.nsfw_action, ("spoiler", "refuse"))
        for phrase in self.nsfw_words:
            _require(bool(phrase.strip()), "moderation.nsfw_words", self.nsfw_words, "must not hold an empty phrase")


@dataclass(frozen=True)
class PerformanceConfig:
    """GPU speed-ups (pipeline/acceleration.py). Each applies on CUDA only unless noted."""

    channels_last: bool = True  # UNet and VAE in channels_last memory format
    fuse_qkv: bool = True  # one fused projection for attention's query, key and value
    compile: str = "auto"  # torch.compile the UNet and VAE decoder: auto (on CUDA) | on | off
    compile_mode: str = "default"  # torch.compile mode (max-autotune* compile for minutes)
    compile_cache_dir: str = ""  # inductor caches reused across restarts; empty = <data_dir>/torch-cache
    warmup: bool = True  # one generation at start-up, so no user's job pays for compiling
    prompt_cache_size: int = 64  # text-encoder outputs kept for repeated prompts, on any device; 0 = off
    recompile_limit: int = 64  # shapes compiled per model; past it new shapes run uncompiled (slower, no error)

    def check(self) -> None:
        _one_of("performance.compile", self.compile, ("auto", "on", "off"))
        _one_of("performance.compile_mode", self.compile_mode,
                ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
        _in_range("performance.prompt_cache_size", self.prompt_cache_size, 0, 100_000)
        _in_range("performance.recompile_limit", self.recompile_limit, 1, 10_000)


@dataclass(frozen=True)
class ArenaConfig:
    """Blinded A/B rounds: a share of text-to-image rounds shows two base and two adapter candidates."""

    adapter: str = ""  # the adapter under test; empty = no arena at start-up (see /arena start)
    fraction: float = 0.5  # share of text-to-image rounds that become comparisons
    reveal_after_s: float = 86_400.0  # /arena results shows a round's assignment only once it is this old

    def check(self) -> None:
        _in_range("arena.fraction", self.fraction, 0.0, 1.0)
        _in_range("arena.reveal_after_s", self.reveal_after_s, 0.0, 10 * 365 * 86_400.0)


@dataclass(frozen=True)
class DashboardConfig:
    """The moderators' web dashboard, /healthz and /metrics (bot/dashboard/), served by the bot itself."""

    enabled: bool = True
    listen: str = "127.0.0.1:8686"  # host:port; /healthz and /metrics are unauthenticated, so keep it local
    public_url: str = ""  # what login links start with (a reverse proxy's https URL); empty = http://<listen>
    session_hours: float = 12.0  # a login lasts this long
    permission_cache_s: float = 60.0  # a moderator demoted in Discord loses access within this time
    page_size: int = 24  # rounds per gallery page
    idle_timeout_s: float = 15.0  # a socket without a whole request header this long is closed (keep-alive too)
    body_timeout_s: float = 30.0  # a request body not all there this long is answered 408

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def check(self) -> None:
        host, _, port = self.listen.rpartition(":")
        _require(bool(host) and port.isdigit() and int(port) <= 65535, "dashboard.listen", self.listen,
                 "must be host:port, e.g. 127.0.0.1:8686")
        _require(not self.public_url or self.public_url.startswith(("http://", "https://")), "dashboard.public_url",
                 self.public_url, "must be empty or an http(s) URL")
        _in_range("dashboard.session_hours", self.session_hours, 0.01, 24 * 90)
        _in_range("dashboard.permission_cache_s", self.permission_cache_s, 0.0, 3600.0)
        _in_range("dashboard.page_size", self.page_size, 1, 200)
        _in_range("dashboard.idle_timeout_s", self.idle_timeout_s, 0.1, 3600.0)
        _in_range("dashboard.body_timeout_s", self.body_timeout_s, 0.1, 3600.0)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    votes: VotesConfig = field(default_factory=VotesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    arena: ArenaConfig = field(default_factory=ArenaConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    base_dir: Path = Path(".")  # folder of the config file; not a TOML key

    def check(self) -> None:
        for section in (self.model, self.generation, self.discord, self.votes, self.storage, self.queue,
                        self.refine, self.moderation, self.performance, self.arena, self.dashboard):
            section.check()
        _require(len(self.votes.emoji) == self.generation.candidates, "votes.emoji", self.votes.emoji,
                 f"needs one emoji per candidate ({self.generation.candidates})")
        _require(self.moderation.flag_emoji not in (*self.votes.emoji, self.votes.none_emoji),
                 "moderation.flag_emoji", self.moderation.flag_emoji, "must differ from the vote emoji")
        _require(self.moderation.remove_emoji not in (*self.votes.emoji, self.votes.none_emoji),
                 "moderation.remove_emoji", self.moderation.remove_emoji, "must differ from the vote emoji")
        _require(self.queue.cancel_emoji not in (*self.votes.emoji, self.moderation.flag_emoji,
                                                 self.moderation.remove_emoji),
                 "queue.cancel_emoji", self.queue.cancel_emoji, "must differ from the vote, flag and remove emoji")

    @property
    def data_dir(self) -> Path:
        return self._path(self.storage.data_dir)

    @property
    def journal_path(self) -> Path:
        return self._path(self.storage.journal) if self.storage.journal else self.data_dir / "journal.sqlite3"

    @property
    def oxen_repo_path(self) -> Path:
        return self._path(self.storage.oxen_repo) if self.storage.oxen_repo else self.data_dir / "oxen"

    @property
    def models_path(self) -> Path:
        """Trained LoRA adapters, one folder each (`refinery train` writes them, the generator loads them)."""
        return self._path(self.model.models_dir) if self.model.models_dir else self.data_dir / "models"

    @property
    def jobs_path(self) -> Path:
        """The in-process queue's accepted, unfinished jobs (pipeline/job_store.py)."""
        return self.data_dir / "jobs.sqlite3"

    @property
    def compile_cache_path(self) -> Path:
        cache = self.performance.compile_cache_dir
        return self._path(cache) if cache else self.data_dir / "torch-cache"

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path


SECTIONS: dict[str, type] = {f.name: f.type for f in fields(Config) if f.name != "base_dir"}


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; `None` gives the defaults."""
    if path is None:
        config = Config()
        config.check()
        return config
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(raw, base_dir=path.resolve().parent)


def config_from_dict(raw: dict[str, Any], *, base_dir: Path = Path(".")) -> Config:
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table, got {value!r}")
        sections[name] = _section(name, hints[name], value)
    config = Config(**sections, base_dir=base_dir)
    config.check()
    return config


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown key {name}.{key} (known: {', '.join(hints)})")
        kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list):
            _bad(key, value, "must be a list")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | str):
                _bad(key, item, "list items must be strings (or channel ids)")
        return tuple(str(item) for item in value)
    if hint is bool:
        return value if isinstance(value, bool) else _bad(key, value, "must be true or false")
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _bad(key, value, "must be an integer")
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _bad(key, value, "must be a number")
    if hint is str:
        return value if isinstance(value, str) else _bad(key, value, "must be a string")
    raise AssertionError(f"unsupported config type for {key}: {hint}")


def _bad(key: str, value: Any, why: str) -> Any:
    raise ConfigError(f"{key} = {value!r}: {why}")


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        _bad(key, value, why)


def _in_range(key: str, value: float, low: float, high: float) -> None:
    _require(low <= value <= high, key, value, f"must be between {low} and {high}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, value, f"must be one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Secrets:
    """Secrets come only from the environment. `repr` never shows them."""

    discord_token: str = field(default="", repr=False)
    oxen_auth_token: str = field(default="", repr=False)
    export_key: str = field(default="", repr=False)
    dashboard_key: str = field(default="", repr=False)  # signs dashboard logins; empty = random per start

    @classmethod
    def from_env(cls, env: typing.Mapping[str, str] | None = None) -> Secrets:
        env = os.environ if env is None else env
        return cls(
            discord_token=env.get("DISCORD_TOKEN", "").strip(),
            oxen_auth_token=env.get("OXEN_AUTH_TOKEN", "").strip(),
            export_key=env.get("REFINERY_EXPORT_KEY", "").strip(),
            dashboard_key=env.get("REFINERY_DASHBOARD_KEY", "").strip(),
        )
