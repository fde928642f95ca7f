"""A hanging Redis never freezes the bot: the bot side of the queue is redis.asyncio with timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis

from tests.conftest import World

REDIS = ("127.0.0.1", 6379)


class StallingProxy:
    """A TCP proxy to the local Redis that can stop forwarding: a server that accepts and never answers."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection(*REDIS)
        pumps = [asyncio.create_task(self._pump(client_r, upstream_w)),
                 asyncio.create_task(self._pump(upstream_r, client_w))]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (client_w, upstream_w):
            with contextlib.suppress(Exception):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            while self.stalled.is_set():  # hold everything: the client waits for an answer that never comes
                await asyncio.sleep(0.05)
            writer.write(data)
            await writer.drain()


@pytest.fixture
async def proxy() -> AsyncIterator[StallingProxy]:
    try:
        redis.Redis(*REDIS, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({exc}); this test needs a real one behind its proxy")
    async with StallingProxy() as running:
        yield running


async def test_a_hanging_redis_freezes_nobody(world: World, start_bot, proxy: StallingProxy) -> None:
    """While Redis hangs, other users' commands are answered at once; the prompt's author is told, within the
    command timeout, that the queue is unavailable."""
    url = f"redis://127.0.0.1:{proxy.port}/0"
    async with start_bot({"queue": {"redis_url": url, "redis_prefix": f"stall-{time.monotonic_ns()}"}}):
        proxy.stalled.set()
        started = time.monotonic()
        prompt = await world.server.invoke_slash("imagine", {"prompt": "a lighthouse"}, user_id=world.alice,
                                                 channel_id=world.imagine)
        await asyncio.sleep(0.5)  # alice's submit is now waiting on the hung Redis
        other = await world.server.invoke_slash("model list", {}, user_id=world.bob, channel_id=world.imagine)
        await other.wait_for(lambda i: bool(i.responses), timeout=3)
        answered_in = time.monotonic() - started
        assert "In use: the base model" in other.responses[0]["data"]["content"]
        assert prompt.original is None or "unreachable" not in prompt.original.get("content", ""), \
            "bob was answered while alice's submit still waited on Redis"
        await prompt.wait_for(lambda i: bool(i.original and "unreachable" in i.original["content"]), timeout=15)
        told_in = time.monotonic() - started
        assert "The image queue is unreachable right now" in prompt.original["content"]
        assert answered_in < 3 and told_in < 12, (answered_in, told_in)
        proxy.stalled.clear()
