"""What a client may cost the dashboard: how long it may take to send a request, how big a body may be, and
how much log a broken or abandoned request may write.

aiohttp waits for a request's header for `keepalive_timeout` (an hour by default) and for a declared body
as long as the client likes, and logs every parser error and every client that leaves mid-body as an ERROR
with a traceback: anyone who can reach the port could hold sockets open and fill the log. Here a socket
that has not sent a whole header within `[dashboard] idle_timeout_s` is closed, a body is read at once
within `body_timeout_s` and `MAX_BODY_BYTES` (408 and 413, the socket closed), a form that does not parse
is a 400, and those client faults become one DEBUG line a minute that counts them. A fault of the
dashboard's own (a 500 from a handler) is still logged in full.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from bot.config import DashboardConfig

MAX_BODY_BYTES = 1024 * 1024  # the largest form is the export form: a few hundred bytes
LINGER_S = 2.0  # after a 413, how long the rest of a body is read (and dropped) so the client sees the answer
QUIET_EVERY_S = 60.0
# Faults of the client, not of the dashboard: a request aiohttp cannot parse, a body that is not what its
# header said, a client that left while it was read (aiohttp fails the read with ConnectionResetError).
CLIENT_FAULTS = (HttpProcessingError, RequestPayloadError, ConnectionResetError)

log = logging.getLogger("bot.dashboard")


def server_options(settings: DashboardConfig) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner`, passed on to each connection's aiohttp RequestHandler.

    aiohttp starts its keep-alive timer when a socket connects and restarts it after each answer, and
    closes a socket still waiting for a whole request when it fires: it is the header timeout too."""
    return {"keepalive_timeout": settings.idle_timeout_s, "lingering_time": LINGER_S,
            "logger": QuietProtocolLog(logging.getLogger("aiohttp.server"))}


def body_limits(timeout_s: float) -> Any:
    """A middleware (first in line) that reads the whole body before anything else looks at it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.body_exists:
            declared = request.content_length
            if declared is not None and declared > MAX_BODY_BYTES:
                return _closing(413, f"A request body of {declared} bytes is over the limit of {MAX_BODY_BYTES}.")
            form = request.method == "POST" and request.content_type in _FORMS
            try:
                async with asyncio.timeout(timeout_s):
                    # Kept by aiohttp: the guard's and the handler's request.post() answer from this.
                    await (request.post() if form else request.read())
            except TimeoutError:
                return _closing(408, f"The request body did not arrive within {timeout_s:g} s.")
            except (ValueError, AssertionError, LookupError):  # what aiohttp's form parsers raise
                return _closing(400, "The form could not be read.")
        return await handler(request)

    return middleware


_FORMS = ("", "application/x-www-form-urlencoded", "multipart/form-data")  # what request.post() parses


def _closing(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=text)
    response.force_close()  # the rest of the body (if any) is not a next request
    return response


class QuietProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with client faults counted into one DEBUG line per `every_s` instead of an
    ERROR with a traceback each; everything else goes through as aiohttp logged it."""

    def __init__(self, logger: logging.Logger, every_s: float = QUIET_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logger, {})
        self.every_s, self.clock = every_s, clock
        self._count = 0
        self._last_line: float | None = None  # when the last line was written (None: not yet)

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        error = _exception(exc_info)
        if not isinstance(error, CLIENT_FAULTS):  # the line as aiohttp wrote it, from aiohttp's frame
            super().log(level, msg, *args, exc_info=exc_info, stacklevel=kwargs.pop("stacklevel", 1) + 1, **kwargs)
            return
        self._count += 1
        now = self.clock()
        if self._last_line is not None and now - self._last_line < self.every_s:
            return
        since = "since start-up" if self._last_line is None else f"in the last {now - self._last_line:.0f} s"
        log.debug("dashboard: %d malformed or aborted request%s %s (the latest: %s: %s)", self._count,
                  "" if self._count == 1 else "s", since, type(error).__name__, " ".join(str(error).split())[:120])
        self._count, self._last_line = 0, now


def _exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1]
    return sys.exc_info()[1] if exc_info else None
