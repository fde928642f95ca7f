"""`/metrics` (Prometheus text, prometheus-client) and `/healthz` (JSON) from one snapshot of the bot.

The registry is the dashboard's own (no process-wide default registry: two bots in one test process
must not share metrics). Totals come from the read model (`storage.round_index`), which counts every
journaled event, so they survive restarts like the journal does; the generation-time histogram counts
rounds made since this start, as Prometheus histograms usually do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from storage.records import Round

GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class Snapshot:
    """What /metrics and /healthz report, read once per request."""

    counts: dict[str, int] = field(default_factory=dict)  # rounds, votes (added), refinements
    queue_depth: int = 0  # jobs waiting or running
    queue_running: int = 0
    writer_managed: bool = False  # this process runs the Oxen writer
    writer_running: bool = False
    writer_pending: int = 0  # events journaled, not yet in Oxen
    writer_lag_s: float = 0.0  # age of the oldest of them
    writer_lag_limit_s: float = 0.0  # past this, Oxen is behind (storage.writer_settings.lag_threshold_s)
    commit_s: float | None = None  # how long the writer's last commit took
    dropped_events: int = 0
    discord_connected: bool = False
    discord_latency_s: float | None = None

    @property
    def problems(self) -> list[str]:
        found = []
        if self.writer_managed and not self.writer_running:
            found.append("the Oxen writer is not running")
        if self.writer_managed and self.writer_lag_s > self.writer_lag_limit_s:
            found.append(f"Oxen is behind the journal: {self.writer_pending} event(s), the oldest "
                         f"{self.writer_lag_s:.0f} s old")
        if not self.discord_connected:
            found.append("not connected to Discord")
        return found

    def health(self) -> dict[str, object]:
        return {"ok": not self.problems, "problems": self.problems,
                "writer": {"managed": self.writer_managed, "running": self.writer_running,
                           "pending": self.writer_pending, "lag_s": round(self.writer_lag_s, 3),
                           "last_commit_s": self.commit_s},
                "queue": {"depth": self.queue_depth, "running": self.queue_running},
                "discord": {"connected": self.discord_connected, "latency_s": self.discord_latency_s},
                "counts": asdict(self)["counts"], "dropped_events": self.dropped_events}


class _SnapshotCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        s = self._metrics.snapshot
        for kind, what in (("rounds", "Rounds journaled"), ("votes", "Votes added"),
                           ("refinements", "Refinement requests journaled")):
            yield CounterMetricFamily(f"refinery_{kind}", what, value=s.counts.get(kind, 0))
        yield CounterMetricFamily("refinery_dropped_events", "Reactions and replies dropped by the rate limit "
                                  "since start-up", value=s.dropped_events)
        yield GaugeMetricFamily("refinery_queue_depth", "Jobs waiting or running", value=s.queue_depth)
        yield GaugeMetricFamily("refinery_queue_running", "Jobs running", value=s.queue_running)
        yield GaugeMetricFamily("refinery_writer_running", "1 while the Oxen writer process runs",
                                value=int(s.writer_running))
        yield GaugeMetricFamily("refinery_writer_pending_events", "Journaled events not yet in Oxen",
                                value=s.writer_pending)
        yield GaugeMetricFamily("refinery_writer_lag_seconds", "Age of the oldest event not yet in Oxen",
                                value=s.writer_lag_s)
        if s.commit_s is not None:
            yield GaugeMetricFamily("refinery_writer_commit_seconds", "Duration of the last Oxen commit",
                                    value=s.commit_s)
        yield GaugeMetricFamily("refinery_discord_connected", "1 while connected to the Discord gateway",
                                value=int(s.discord_connected))
        if s.discord_latency_s is not None:
            yield GaugeMetricFamily("refinery_discord_latency_seconds", "Gateway heartbeat latency",
                                    value=s.discord_latency_s)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.snapshot = Snapshot()
        self.generation = Histogram("refinery_generation_seconds", "Seconds to generate a round's images "
                                    "(rounds made since start-up)", buckets=GENERATION_BUCKETS,
                                    registry=self.registry)
        self.registry.register(_SnapshotCollector(self))

    def observe(self, rounds: Iterable[Round], since: float) -> None:
        for found in rounds:
            if found.created_at >= since:
                self.generation.observe(found.generate_s)

    def render(self, snapshot: Snapshot) -> bytes:
        self.snapshot = snapshot
        return generate_latest(self.registry)
