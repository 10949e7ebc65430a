"""The analysis scheduler: each enabled agent every ``interval_s`` over the window since its
last run, and on demand; events come from StorageService.QueryEvents only.

A scheduled cycle is deferred while the ResourceMonitor says the machine is busy — never
skipped silently: it is logged, counted (``edgebot_anomaly_cycles_total{outcome="deferred"}``)
and reported per agent in ListAgents (count, last reason and time). The deferred window is
kept, so the next cycle covers it. On-demand runs ignore the monitor unless
``resources.defer_on_demand`` is set.

Event feeds (anomaly_svc.sources) push events from elsewhere — rows of an existing
``log_entries`` table — through ``analyze_events``, alongside or instead of the windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import psutil

from anomaly_svc import metrics
from anomaly_svc.agents import AgentSettings, BaseAgent, EventView, Window, create
from anomaly_svc.alerts import AnomalyRecorder
from anomaly_svc.config import CacheSection, ResourcesSection
from anomaly_svc.models.manager import ModelManager
from anomaly_svc.store import AnomalyRecord
from gen.edgebot.v1 import storage_pb2, storage_pb2_grpc
from mesh.timeutil import NS_PER_S, now_ns, ns_to_ts

log = logging.getLogger(__name__)


class ResourceMonitor:
    def __init__(self, settings: ResourcesSection) -> None:
        self.settings = settings
        psutil.cpu_percent(interval=None)  # primes the CPU counter

    def busy_reason(self) -> str:
        """Why the machine is too busy for a cycle, or "" when it is not."""
        cpu = float(psutil.cpu_percent(interval=None))
        memory = float(psutil.virtual_memory().percent)
        if cpu > self.settings.max_cpu_percent:
            return (
                f"CPU at {cpu:.0f}% > resources.max_cpu_percent {self.settings.max_cpu_percent:g}%"
            )
        if memory > self.settings.max_memory_percent:
            return (
                f"memory at {memory:.0f}% > resources.max_memory_percent "
                f"{self.settings.max_memory_percent:g}%"
            )
        return ""


class StorageUnavailable(Exception):
    """QueryEvents failed; the message says why."""


class EventSource:
    """Pages through QueryEvents (oldest first) with a TTL cache of identical windows."""

    def __init__(
        self,
        stub: storage_pb2_grpc.StorageServiceAsyncStub,
        cache: CacheSection,
        page_size: int,
        max_events: int,
        timeout_s: float,
    ) -> None:
        self.stub = stub
        self.cache = cache
        self.page_size = page_size
        self.max_events = max_events
        self.timeout_s = timeout_s
        self._cache: OrderedDict[tuple[object, ...], tuple[float, list[EventView]]] = OrderedDict()
        self.queries = 0

    async def fetch(
        self, services: Sequence[str], types: Sequence[str], start_ns: int, end_ns: int
    ) -> list[EventView]:
        key = (tuple(services), tuple(types), start_ns, end_ns)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.cache.ttl_s:
            return cached[1]
        events = await self._query(services, types, start_ns, end_ns)
        if self.cache.ttl_s > 0:
            self._cache[key] = (time.monotonic(), events)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache.max_entries:
                self._cache.popitem(last=False)
        return events

    async def _query(
        self, services: Sequence[str], types: Sequence[str], start_ns: int, end_ns: int
    ) -> list[EventView]:
        request = storage_pb2.QueryEventsRequest(
            filter=storage_pb2.EventFilter(services=services, types=types),
            page_size=self.page_size,
            order=storage_pb2.SORT_ORDER_OLDEST_FIRST,
        )
        ns_to_ts(start_ns, request.filter.start_time)
        ns_to_ts(end_ns, request.filter.end_time)
        events: list[EventView] = []
        while len(events) < self.max_events:
            try:
                self.queries += 1
                page = await self.stub.QueryEvents(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise StorageUnavailable(
                    f"storage QueryEvents failed: {exc.code().name}: {exc.details()}"
                ) from None
            events.extend(EventView.from_proto(e) for e in page.events)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return events[: self.max_events]


@dataclass
class CycleResult:
    agent: str
    events_analyzed: int = 0
    anomalies_found: int = 0
    duration_s: float = 0.0
    deferred: bool = False
    deferred_reason: str = ""
    error: str = ""


@dataclass
class AgentRunner:
    agent: BaseAgent
    settings: AgentSettings
    last_end_ns: int = 0
    last_run_ns: int = 0
    next_run_ns: int = 0
    anomalies_found: int = 0
    last_error: str = ""
    model_version: str = ""
    deferred_cycles: int = 0
    last_deferred_reason: str = ""
    last_deferred_ns: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EventFeed(Protocol):
    """A source that pushes new events to the scheduler instead of being queried by window."""

    @property
    def replaces_storage(self) -> bool:
        """True when the scheduled StorageService windows should not run at all."""

    def start(self, scheduler: Scheduler) -> None: ...

    async def stop(self) -> None: ...


class Scheduler:
    def __init__(
        self,
        agents: Sequence[AgentSettings],
        source: EventSource,
        recorder: AnomalyRecorder,
        models: ModelManager,
        monitor: ResourceMonitor,
    ) -> None:
        self.runners = {(s.name or s.type): AgentRunner(create(s), s) for s in agents}
        self.source = source
        self.recorder = recorder
        self.models = models
        self.monitor = monitor
        self.feeds: list[EventFeed] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add_feeds(self, feeds: Sequence[EventFeed]) -> None:
        self.feeds.extend(feeds)

    def start(self) -> None:
        now = now_ns()
        for feed in self.feeds:
            feed.start(self)
        if any(feed.replaces_storage for feed in self.feeds):
            return
        for name, runner in self.runners.items():
            if runner.settings.enabled:
                runner.next_run_ns = now + int(runner.settings.interval_s * NS_PER_S)
                self._tasks.append(asyncio.create_task(self._loop(runner), name=f"agent-{name}"))

    async def stop(self) -> None:
        for feed in self.feeds:
            await feed.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _loop(self, runner: AgentRunner) -> None:
        while True:
            await asyncio.sleep(max(0.0, (runner.next_run_ns - now_ns()) / NS_PER_S))
            try:
                await self.run(runner, scheduled=True)
            except Exception:
                log.exception("analysis cycle crashed", extra={"agent": runner.agent.name})
            runner.next_run_ns = now_ns() + int(runner.settings.interval_s * NS_PER_S)

    async def run(
        self,
        runner: AgentRunner,
        *,
        scheduled: bool,
        start_ns: int | None = None,
        end_ns: int | None = None,
        defer_when_busy: bool = True,
    ) -> CycleResult:
        """One cycle; without a range, the window since the agent's last run."""
        name = runner.agent.name
        if defer_when_busy and (reason := self.monitor.busy_reason()):
            log.warning("analysis cycle deferred", extra={"agent": name, "reason": reason})
            metrics.CYCLES.labels(name, "deferred").inc()
            runner.deferred_cycles += 1
            runner.last_deferred_reason = reason
            runner.last_deferred_ns = now_ns()
            return CycleResult(name, deferred=True, deferred_reason=reason)
        async with runner.lock:
            return await self._run_locked(runner, scheduled, start_ns, end_ns)

    async def _run_locked(
        self, runner: AgentRunner, scheduled: bool, start_ns: int | None, end_ns: int | None
    ) -> CycleResult:
        began = time.monotonic()
        name = runner.agent.name
        end = end_ns if end_ns is not None else now_ns()
        interval_ns = int(runner.settings.interval_s * NS_PER_S)
        start = start_ns if start_ns is not None else (runner.last_end_ns or end - interval_ns)
        result = CycleResult(name)
        try:
            events = await self.source.fetch(
                runner.agent.services, runner.agent.event_types, start, end
            )
            candidates = await self._detect(runner, Window(start, end, events))
        except StorageUnavailable as exc:
            result.error = runner.last_error = str(exc)
            log.error("analysis cycle failed", extra={"agent": name, "error": result.error})
            metrics.CYCLES.labels(name, "error").inc()
            result.duration_s = time.monotonic() - began
            return result
        runner.last_error = ""
        runner.last_run_ns = now_ns()
        if start_ns is None and end_ns is None:
            runner.last_end_ns = end
        runner.anomalies_found += len(candidates)
        metrics.CYCLES.labels(name, "ok").inc()
        result.events_analyzed = len(events)
        result.anomalies_found = len(candidates)
        result.duration_s = time.monotonic() - began
        log.info(
            "analysis cycle done",
            extra={"agent": name, "events": len(events), "anomalies": len(candidates),
                   "scheduled": scheduled},
        )  # fmt: skip
        return result

    async def _detect(self, runner: AgentRunner, window: Window) -> list[AnomalyRecord]:
        """Run one agent over a window and record what it found."""
        model = self.models.current(runner.agent.name) if runner.agent.uses_model else None
        runner.model_version = model.version if model else ""
        # Agents are CPU-bound; a thread keeps RPCs and other streams responsive.
        candidates = await asyncio.to_thread(runner.agent.analyze, window, model)
        for candidate in candidates:
            await self.recorder.record(candidate)
        return candidates

    async def analyze_events(
        self, events: Sequence[EventView], origin: str
    ) -> list[CycleResult] | None:
        """Every enabled agent over events a feed pushed (each agent sees the services and
        types it reads); None, changing nothing, when the machine is busy."""
        if reason := self.monitor.busy_reason():
            log.warning("feed analysis deferred", extra={"source": origin, "reason": reason})
            return None
        ordered = sorted(events, key=lambda e: e.time_ns)
        start = ordered[0].time_ns if ordered else now_ns()
        end = ordered[-1].time_ns + 1 if ordered else start + 1
        results = []
        for name, runner in self.runners.items():
            if not runner.settings.enabled:
                continue
            began = time.monotonic()
            selected = [e for e in ordered if _reads(runner.agent, e)]
            async with runner.lock:
                candidates = await self._detect(runner, Window(start, end, selected))
                runner.last_run_ns = now_ns()
                runner.anomalies_found += len(candidates)
            metrics.CYCLES.labels(name, "ok").inc()
            results.append(
                CycleResult(name, len(selected), len(candidates), time.monotonic() - began)
            )
        return results


def _reads(agent: BaseAgent, event: EventView) -> bool:
    """The same selection a StorageService query by services and types makes."""
    return (not agent.services or event.service in agent.services) and (
        not agent.event_types or event.type in agent.event_types
    )
