"""Start-up and shut-down of the whole bot: every shared resource is built once here and passed in.

`running_app` is used by `refinery run`, `refinery demo` and the end-to-end tests alike, so all
three exercise the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.client import RefineryBot, point_discord_at
from bot.config import Config, Secrets
from bot.dashboard import Dashboard
from bot.service import Masker, RefineryService
from pipeline.acceleration import Acceleration
from pipeline.diffusers_generator import DiffusersGenerator, GeneratorSettings
from pipeline.generator import Generator
from pipeline.job_store import JobStore
from pipeline.jobs import JobQueue
from pipeline.queue import LocalQueue
from pipeline.redis_queue import RedisQueue
from storage.async_journal import AsyncJournal
from storage.images import ImageStore
from storage.journal import Journal
from storage.writer_process import WriterProcess
from storage.writer_settings import WriterSettings

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The bot could not start (bad token, unreachable gateway, model that does not load)."""


@dataclass
class App:
    config: Config
    bot: RefineryBot
    service: RefineryService
    queue: JobQueue
    journal: AsyncJournal
    writer: WriterProcess | None
    task: asyncio.Task[None]
    dashboard: Dashboard | None = None

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the gateway's READY, or raise StartupError if the bot stopped first."""
        ready = asyncio.create_task(self.bot.wait_until_ready())
        done, _ = await asyncio.wait({ready, self.task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if self.task in done and self.task.exception() is not None:
                raise StartupError(f"the bot stopped during start-up: {self.task.exception()}")
            raise StartupError(f"the bot was not ready after {timeout:.0f} s")


def generator_settings(config: Config) -> GeneratorSettings:
    model = config.model
    return GeneratorSettings(
        model=model.id, revision=model.revision or None, scheduler=model.scheduler, device=model.device,
        dtype=model.dtype, local_files_only=model.local_files_only,
        instruct_model=model.instruct_model or None, inpaint_model=model.inpaint_model or None,
        clipseg_model=model.clipseg_model or None, cpu_threads=model.cpu_threads or None,
        safety_checker=config.moderation.safety_checker or None,
        acceleration=acceleration(config), models_dir=str(config.models_path),
    )


def acceleration(config: Config) -> Acceleration:
    """[performance], with the warm-up shape taken from what most jobs look like ([generation]
    defaults, and [queue] batch_size requests per call)."""
    performance, generation = config.performance, config.generation
    return Acceleration(
        channels_last=performance.channels_last, fuse_qkv=performance.fuse_qkv, compile=performance.compile,
        compile_mode=performance.compile_mode, compile_cache_dir=str(config.compile_cache_path),
        warmup=performance.warmup, prompt_cache_size=performance.prompt_cache_size,
        recompile_limit=performance.recompile_limit,
        warmup_width=generation.default_width, warmup_height=generation.default_height,
        warmup_count=generation.candidates, warmup_batch=config.queue.batch_size,
        warmup_guidance=generation.default_guidance,
    )


def writer_settings(config: Config) -> WriterSettings:
    return WriterSettings(
        journal=config.journal_path, repo=config.oxen_repo_path, data_dir=config.data_dir,
        interval_s=config.storage.commit_interval_s, batch=config.storage.commit_batch,
        remote=config.storage.remote or None, push_interval_s=config.storage.push_interval_s,
        stop_flush_s=config.storage.stop_flush_s,
    )


@contextlib.asynccontextmanager
async def running_app(config: Config, secrets: Secrets, *, generator: Generator | None = None,
                      start_writer: bool = True) -> AsyncIterator[App]:
    """Build every resource, start the bot, and tear it all down in reverse order on exit."""
    point_discord_at(config.discord.api_base, config.discord.gateway_url)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        journal = AsyncJournal(Journal(config.journal_path))
        stack.push_async_callback(journal.close)
        writer = None
        if start_writer:
            writer = WriterProcess(writer_settings(config))
            writer.start()
            stack.callback(writer.stop)
            watchdog = asyncio.create_task(_keep_writer_running(writer), name="refinery-writer-watchdog")
            stack.callback(watchdog.cancel)
        if generator is None:
            generator = DiffusersGenerator(generator_settings(config))
        limits = {"max_depth": config.queue.max_depth, "max_per_user": config.queue.max_per_user,
                  "cooldown_s": config.queue.cooldown_s}
        queue: JobQueue
        if config.queue.redis_url:
            # `refinery worker` processes hold the model and do the GPU work; this process only
            # queues and follows jobs (and computes small CLIPSeg masks on its CPU).
            queue = RedisQueue(config.queue.redis_url, prefix=config.queue.redis_prefix, **limits)
        else:
            # Accepted jobs are kept on disk until they end, so a crash loses none (pipeline/job_store.py).
            store = JobStore(config.jobs_path)
            stack.callback(store.close)  # after the queue and the bot: answers being posted forget their jobs
            queue = LocalQueue(generator, batch_size=config.queue.batch_size, store=store, **limits)
        await queue.start()
        stack.push_async_callback(queue.close)
        if not config.queue.redis_url:
            log.info("loading model %s", config.model.id)
            await queue.run_in_worker(generator.load)
            await queue.run_in_worker(generator.warm_up)  # compiles now, on the worker thread, before any job
        # One installation = one data folder on one host: what a restarted bot is, for its queued jobs.
        owner = f"{socket.gethostname()}:{config.data_dir.resolve()}"
        service = RefineryService(config, journal, queue, ImageStore(config.data_dir), owner=owner,
                                  masker=_masker(generator, config),
                                  has_instruct_model=bool(config.model.instruct_model),
                                  export_key=secrets.export_key or None)
        await service.load()
        bot = RefineryBot(config, service)
        if config.dashboard.enabled:  # the moderators' web pages, /healthz and /metrics (bot/dashboard/)
            bot.dashboard = Dashboard(config, service, key=secrets.dashboard_key, writer=writer)
            await bot.dashboard.start()
            stack.push_async_callback(bot.dashboard.stop)  # after the bot's stop: health answers until then
        task = asyncio.create_task(bot.start(secrets.discord_token), name="refinery-discord")
        stack.push_async_callback(_stop_bot, bot, task, queue, config.discord.stop_timeout_s)
        yield App(config, bot, service, queue, journal, writer, task, bot.dashboard)


async def _keep_writer_running(writer: WriterProcess, every_s: float = 5.0) -> None:
    """The Oxen writer is a separate process; if it dies, start it again (it backs off by itself).
    While Oxen lags the journal, say so in the log."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if await asyncio.to_thread(writer.ensure_running):
                log.warning("the Oxen writer had stopped and was restarted")
            await asyncio.to_thread(writer.report_lag)  # a warning while Oxen falls behind the journal
        except Exception:
            log.exception("could not restart the Oxen writer")


def _masker(generator: Generator, config: Config) -> Masker | None:
    """CLIPSeg masks for regions named in words, when a CLIPSeg model is configured."""
    if not config.model.clipseg_model or not isinstance(generator, DiffusersGenerator):
        return None
    return lambda image, phrase: generator.masker().mask_for(image, phrase)


async def _stop_bot(bot: RefineryBot, task: asyncio.Task[None], queue: JobQueue, within_s: float) -> None:
    """Close the queue first, so each waiting user's acknowledgement can still say what became of
    their job (kept for after the restart, or lost) while the bot is connected; then disconnect.
    At most `within_s` in all, whatever Discord does: unreachable, it never answers those messages,
    and discord.py's reconnect back-off sleeps (up to ~17 min) through a close()."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def left() -> float:
        return max(0.0, started + within_s - loop.time())

    log.info("stopping: no new jobs; telling waiting users and disconnecting (at most %.0f s)", within_s)
    await asyncio.wait({asyncio.ensure_future(queue.close())}, timeout=left())
    if bot.answering:
        await asyncio.wait(set(bot.answering), timeout=min(5.0, left()))
    closing = asyncio.ensure_future(bot.close())
    await asyncio.wait({closing}, timeout=left())
    # Once close() is done nothing is left to say to Discord: a task still running sleeps in the
    # reconnect back-off (or hangs in a connect), which close() does not wake.
    await asyncio.wait({task}, timeout=min(1.0, left()) if closing.done() else left())
    if not task.done():
        log.warning("Discord is not answering: disconnecting without it")
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    log.info("disconnected from Discord in %.1f s", loop.time() - started)
    if task.done() and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()  # retrieved: a start-up failure was reported by whoever awaited it
