"""EdgeBot end to end: fleet processes -> ingest -> pipeline -> storage -> PostgreSQL.

A phase runs the fleet (bench/fleet.py) in a few processes against a running mothership
and returns what it measured: events acknowledged per second, ack latency, CPU seconds
per 1,000 events and peak RSS of every process (the fleet's, each service's, PostgreSQL's
with its backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet import FleetResult, FleetSpec
from bench.mothership import Mothership
from bench.pg import ROOT, PgServer, checkpoint
from bench.procs import Sampler, Watched


@dataclass
class PhaseResult:
    name: str
    offered_per_s: float | None
    appended: int
    acked: int
    rejected: int
    events_per_s: float
    latency_ms: dict[str, float]
    cpu_s_per_1k: dict[str, float]
    peak_rss_mb: dict[str, float]
    errors: dict[str, float]
    still_spooled: int
    rss_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def steady_rate(acks: list[tuple[float, int]], total: int) -> float:
    """Events/s between the acks that reach 10 % and 90 % of ``total`` (no ramp, no tail)."""
    ordered = sorted(acks)
    done, t10, t90 = 0, None, None
    for at, count in ordered:
        done += count
        if t10 is None and done >= 0.1 * total:
            t10, at10 = at, done
        if done >= 0.9 * total:
            t90, at90 = at, done
            break
    if t10 is None or t90 is None or t90 <= t10:
        span = (ordered[-1][0] - ordered[0][0]) if ordered else 0.0
        return total / span if span > 0 else 0.0
    return (at90 - at10) / (t90 - t10)


def merge(results: list[FleetResult]) -> FleetResult:
    merged = FleetResult()
    for part in results:
        merged.appended += part.appended
        merged.acked += part.acked
        merged.rejected += part.rejected
        merged.still_spooled += part.still_spooled
        merged.offered_seconds = max(merged.offered_seconds, part.offered_seconds)
        merged.acks += [tuple(a) for a in part.acks]  # type: ignore[misc]
        merged.latencies_ms += part.latencies_ms
        for key, value in part.errors.items():
            merged.errors[key] = merged.errors.get(key, 0.0) + value
    return merged


def postgres_pid(server: PgServer) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def watched(mothership: Mothership, server: PgServer) -> list[Watched]:
    found = [Watched(s.role, s.process.pid) for s in mothership.services]
    return [*found, Watched("postgres", postgres_pid(server), with_children=True)]


@dataclass
class Fleet:
    """Fleet processes for one phase; each gets a share of the agents."""

    workdir: Path
    pki: Path
    agents: int
    processes: int
    shipper: dict[str, Any]

    def specs(self, addresses: list[str], mode: str, **extra: Any) -> list[FleetSpec]:
        shares = [list(range(self.agents))[n :: self.processes] for n in range(self.processes)]
        specs = []
        for n, share in enumerate(s for s in shares if s):
            work = self.workdir / f"fleet-{mode}-{n}"
            work.mkdir(parents=True, exist_ok=True)
            part = {
                k: v / self.processes if k in ("events", "rate") else v for k, v in extra.items()
            }
            if "events" in part:
                part["events"] = int(part["events"])
            specs.append(FleetSpec(share, addresses, str(self.pki), str(work), mode,
                                   shipper=self.shipper, **part))  # fmt: skip
        return specs


async def run_phase(
    name: str,
    mothership: Mothership,
    server: PgServer,
    specs: list[FleetSpec],
    offered: float | None,
    during: contextlib.AbstractAsyncContextManager[Any] | None = None,
) -> PhaseResult:
    """One phase; ``during`` (a profiler) is entered once the fleet has been told to go."""
    await checkpoint(server)
    children = [start_fleet(spec, n) for n, spec in enumerate(specs)]
    try:
        for child, _ in children:
            await read_ready(child)
        roles = watched(mothership, server)
        roles += [Watched(f"fleet{n + 1}", c.pid) for n, (c, _) in enumerate(children)]
        async with Sampler(roles) as sampler:
            for child, _ in children:
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                child.stdin.flush()
            async with during or contextlib.nullcontext():
                for child, _ in children:
                    await asyncio.to_thread(child.wait)
        for child, _ in children:
            if child.returncode != 0:
                raise RuntimeError(f"fleet process failed with code {child.returncode}")
        parts = [FleetResult(**json.loads(out.read_text())) for _, out in children]
    finally:
        for child, _ in children:
            if child.poll() is None:
                child.kill()
    # The fleet processes have exited by the end of the phase: their own figures count.
    cpu = sampler.cpu_used() | {f"fleet{n + 1}": p.cpu_run_s for n, p in enumerate(parts)}
    if any(p.cpu_prefill_s for p in parts):
        cpu["fleet spooling (before go)"] = sum(p.cpu_prefill_s for p in parts)
    return summarise(name, merge(parts), cpu, sampler.peaks(), roles, offered)


def start_fleet(spec: FleetSpec, n: int) -> tuple[subprocess.Popen[bytes], Path]:
    work = Path(spec.workdir)
    spec_path, out = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    with (work / "fleet.log").open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", "--spec", str(spec_path), "--out", str(out)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    return child, out


async def read_ready(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    line = await asyncio.to_thread(child.stdout.readline)
    if line.strip() != b"ready":
        child.wait()
        raise RuntimeError(f"fleet process did not get ready (exit code {child.returncode})")


def summarise(
    name: str,
    merged: FleetResult,
    cpu: dict[str, float],
    peaks: dict[str, float],
    roles: list[Watched],
    offered: float | None,
) -> PhaseResult:
    ordered = sorted(merged.latencies_ms)
    if offered is None:
        rate = steady_rate(merged.acks, merged.acked)
    else:
        last = max((at for at, _ in merged.acks), default=0.0)
        rate = merged.acked / last if last else 0.0
    per_1k = max(merged.acked, 1) / 1000
    return PhaseResult(
        name=name,
        offered_per_s=None if offered is None else merged.appended / merged.offered_seconds,
        appended=merged.appended,
        acked=merged.acked,
        rejected=merged.rejected,
        events_per_s=round(rate, 1),
        latency_ms={
            "p50": percentile(ordered, 0.50),
            "p99": percentile(ordered, 0.99),
            "max": ordered[-1] if ordered else float("nan"),
        },
        cpu_s_per_1k={role: round(seconds / per_1k, 4) for role, seconds in cpu.items()},
        peak_rss_mb=peaks,
        errors=merged.errors,
        still_spooled=merged.still_spooled,
        rss_series={w.role: w.series for w in roles if w.role.startswith("ingest")},
    )
