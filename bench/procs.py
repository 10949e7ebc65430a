"""CPU time and memory of the processes under test, read from /proc through psutil.

A ``Watched`` process is one role (ingest, storage, postgres, ...), optionally with its
children (PostgreSQL's backends); the sampler keeps each role's peak RSS and RSS over time,
and a CPU snapshot before and after a phase gives CPU seconds per role.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class Watched:
    role: str
    pid: int
    with_children: bool = False
    peak_rss_mb: float = 0.0
    series: list[tuple[float, float]] = field(default_factory=list)
    # CPU seconds per pid at the phase's start and as last seen: a backend that exits
    # mid-phase keeps its last reading instead of taking its whole past CPU with it.
    cpu_start: dict[int, float] = field(default_factory=dict)
    cpu_seen: dict[int, float] = field(default_factory=dict)

    def _processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.pid)
            found = [main]
            if self.with_children:
                found += main.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return found

    def cpu_by_pid(self) -> dict[int, float]:
        found = {}
        for process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                found[process.pid] = times.user + times.system
        return found

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_pid().values())

    def start_cpu(self) -> None:
        self.cpu_start = self.cpu_by_pid()
        self.cpu_seen = dict(self.cpu_start)

    def see_cpu(self) -> None:
        self.cpu_seen |= self.cpu_by_pid()

    def cpu_used(self) -> float:
        """CPU seconds since start_cpu of every process seen (started ones count whole)."""
        return sum(cpu - self.cpu_start.get(pid, 0.0) for pid, cpu in self.cpu_seen.items())

    def rss_mb(self) -> float:
        """RSS; for a process with its children (PostgreSQL's backends) their PSS, so the
        shared memory they all map is counted once, not once per backend."""
        total = 0
        for process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if self.with_children:
                    total += process.memory_full_info().pss
                else:
                    total += process.memory_info().rss
        return total / 2**20

    def sample(self, started: float) -> float:
        rss = self.rss_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        self.series.append((round(time.monotonic() - started, 2), round(rss, 1)))
        return rss


class Sampler:
    """Samples every watched role's RSS at a fixed interval while a phase runs."""

    def __init__(self, watched: list[Watched], interval_s: float = 0.5) -> None:
        self.watched = watched
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._cpu_after: dict[str, float] = {}
        self._started = time.monotonic()

    async def __aenter__(self) -> Sampler:
        for item in self.watched:
            item.peak_rss_mb, item.series = 0.0, []
        for item in self.watched:
            item.start_cpu()
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self.watched:
            item.sample(self._started)
            item.see_cpu()
        self._cpu_after = {w.role: w.cpu_used() for w in self.watched}

    async def _run(self) -> None:
        while True:
            for item in self.watched:
                item.sample(self._started)
                item.see_cpu()
            await asyncio.sleep(self.interval_s)

    def cpu_used(self) -> dict[str, float]:
        """CPU seconds each role used while the phase ran."""
        return dict(self._cpu_after)

    def peaks(self) -> dict[str, float]:
        return {w.role: round(w.peak_rss_mb, 1) for w in self.watched}
