"""A per-user sliding-window rate limit for reactions and replies (`moderation.events_per_minute`)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class EventRateLimit:
    """At most `per_minute` events per user in any 60 s window (a sliding window of timestamps).

    Dropped events are counted, and logged at most once a minute per user: a flood must not turn
    into a flood of log lines.
    """

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.dropped = 0
        self._clock = clock
        self._seen: dict[int, deque[float]] = {}
        self._logged: dict[int, float] = {}
        self._calls = 0

    def allow(self, user_id: int) -> bool:
        now = self._clock()
        times = self._seen.setdefault(user_id, deque())
        while times and times[0] <= now - self.WINDOW_S:
            times.popleft()
        self._calls += 1
        if self._calls % 1000 == 0:
            self._forget_idle(now)
        if len(times) < self.per_minute:
            times.append(now)
            return True
        self.dropped += 1
        if now - self._logged.get(user_id, -self.WINDOW_S) >= self.WINDOW_S:
            self._logged[user_id] = now
            log.warning("user %s is over %d events a minute: dropping their reactions and replies (%d "
                        "dropped in all so far)", user_id, self.per_minute, self.dropped)
        return False

    def _forget_idle(self, now: float) -> None:
        """Users quiet for a whole window leave the tables, so they do not grow without bound."""
        for user_id in [u for u, t in self._seen.items() if not t or t[-1] <= now - self.WINDOW_S]:
            del self._seen[user_id]
            self._logged.pop(user_id, None)
