"""The Monitoring page's numbers: health, storage stats and metrics sampled into short series.

Every ``sample_interval_s`` the sampler asks every service for its health, storage for its
stats, and reads the configured Prometheus endpoints; rates and latency quantiles are the
differences between two samples. Series keep the last ``history_points`` points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from anomaly_svc.console.config import MetricsTarget, MonitoringSection
from anomaly_svc.console.mesh_client import MeshClients, MeshError
from anomaly_svc.console.views import sink_json
from gen.edgebot.v1 import storage_pb2

log = logging.getLogger(__name__)
INGEST_EVENTS = "mothership_ingestion_events"
ACK_SECONDS = "mothership_ingestion_ack_seconds"
SPOOL_EVENTS = "edgebot_spool_events"


class Series:
    def __init__(self, points: int) -> None:
        self.points: deque[tuple[float, float]] = deque(maxlen=points)

    def add(self, at: float, value: float) -> None:
        self.points.append((round(at, 3), round(value, 6)))


@dataclass
class Scrape:
    """What one Prometheus endpoint said: counters, gauges and histogram buckets."""

    at: float
    values: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def parse_exposition(text: str, at: float) -> Scrape:
    """Each family's value and histogram buckets, summed over its label sets (a counter split
    by transport or status counts as one)."""
    scrape = Scrape(at)
    bucket_sums: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and "le" in sample.labels:
                bounds = bucket_sums.setdefault(family.name, {})
                bound = float(sample.labels["le"])
                bounds[bound] = bounds.get(bound, 0.0) + sample.value
            elif sample.name in (family.name, f"{family.name}_total"):
                scrape.values[family.name] = scrape.values.get(family.name, 0.0) + sample.value
    for name, bounds in bucket_sums.items():
        scrape.buckets[name] = sorted(bounds.items())
    return scrape


Buckets = list[tuple[float, float]]


def quantile(q: float, before: Buckets, after: Buckets) -> float | None:
    """``histogram_quantile`` over the observations made between two cumulative scrapes."""
    earlier = dict(before)
    deltas = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in deltas:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * (
                (rank - lower_count) / span if span else 1
            )
        lower_bound, lower_count = bound, count
    return lower_bound


class Monitor:
    def __init__(self, config: MonitoringSection, clients: MeshClients) -> None:
        self.config = config
        self.clients = clients
        self.series: dict[str, dict[str, Series]] = {}
        self.health: dict[str, str] = {}
        self.sinks: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.problems: list[str] = []
        self.sampled_at: float | None = None
        self._scrapes: dict[str, Scrape] = {}
        self._inserts: tuple[float, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=config.scrape_timeout_s)

    def _add(self, chart: str, line: str, at: float, value: float) -> None:
        lines = self.series.setdefault(chart, {})
        lines.setdefault(line, Series(self.config.history_points)).add(at, value)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="console-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._http.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                log.exception("console monitoring sample failed")
            await asyncio.sleep(self.config.sample_interval_s)

    async def sample(self) -> None:
        at = time.time()
        problems: list[str] = []
        self.health = dict(await self.clients.health_of_all())
        await self._storage(at, problems)
        for target in self.config.metrics:
            await self._scrape(target, at, problems)
        self.problems = problems
        self.sampled_at = at

    async def _storage(self, at: float, problems: list[str]) -> None:
        try:
            stats = await self.clients.call(
                "storage",
                self.clients.storage.GetStats,
                storage_pb2.StorageServiceGetStatsRequest(),
            )
        except MeshError as exc:
            problems.append(exc.message)
            return
        self.sinks = [sink_json(s) for s in stats.sinks]
        self.stats = {
            "total_inserts": stats.total_inserts,
            "events_last_hour": stats.events_last_hour,
            "duplicates": stats.duplicates,
            "batches": stats.batches,
            "dead_letters": stats.dead_letters,
            "quarantined": stats.quarantined,
        }
        if self._inserts is not None and at > self._inserts[0]:
            rate = max(0, stats.total_inserts - self._inserts[1]) / (at - self._inserts[0])
            self._add("stored_rate", "storage", at, rate)
        self._inserts = (at, stats.total_inserts)
        for sink in stats.sinks:
            self._add("outbox_lag", sink.name, at, sink.outbox_lag.ToTimedelta().total_seconds())
            self._add("outbox_depth", sink.name, at, float(sink.outbox_depth))

    async def _scrape(self, target: MetricsTarget, at: float, problems: list[str]) -> None:
        try:
            reply = await self._http.get(target.url)
            reply.raise_for_status()
            scrape = parse_exposition(reply.text, at)
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(
                f"Metrics of {target.name} could not be read ({target.url}: {exc}) — "
                "check that its metrics port is enabled."
            )
            return
        previous = self._scrapes.get(target.name)
        self._scrapes[target.name] = scrape
        if target.kind == "agent":
            if SPOOL_EVENTS in scrape.values:
                self._add("spool_depth", target.name, at, scrape.values[SPOOL_EVENTS])
            return
        if previous is None or at <= previous.at:
            return
        if INGEST_EVENTS in scrape.values:
            delta = scrape.values[INGEST_EVENTS] - previous.values.get(INGEST_EVENTS, 0.0)
            self._add("ingest_rate", target.name, at, max(0.0, delta) / (at - previous.at))
        before = previous.buckets.get(ACK_SECONDS, [])
        after = scrape.buckets.get(ACK_SECONDS, [])
        for name, q in (("p50", 0.5), ("p95", 0.95)):
            value = quantile(q, before, after)
            if value is not None:
                self._add("ack_latency", f"{target.name} {name}", at, value * 1000)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sampled_at": self.sampled_at,
            "interval_s": self.config.sample_interval_s,
            "health": self.health,
            "sinks": self.sinks,
            "stats": self.stats,
            "problems": self.problems,
            "series": {
                chart: {line: list(series.points) for line, series in lines.items()}
                for chart, lines in self.series.items()
            },
        }


def bucket_counts(
    times: Iterable[float], bucket_s: float, buckets: int, now: float
) -> list[tuple[float, int]]:
    """Counts per bucket for the last ``buckets`` buckets, oldest first (start, count)."""
    end = math.floor(now / bucket_s) * bucket_s + bucket_s
    start = end - buckets * bucket_s
    counts = [0] * buckets
    for at in times:
        if start <= at < end:
            counts[int((at - start) // bucket_s)] += 1
    return [(start + i * bucket_s, count) for i, count in enumerate(counts)]
