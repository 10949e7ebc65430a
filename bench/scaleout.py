"""Scale-out: replicas behind client-side round robin keep exactly-once delivery, and one
ingest holds a fleet of many agents with modest rates without errors or growing memory."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.endtoend import Fleet, run_phase
from bench.identity import tls
from bench.mothership import Mothership
from bench.pg import PgServer, count_events
from gen.edgebot.v1 import pipeline_pb2, pipeline_pb2_grpc
from mesh.channel import open_channel
from mesh.config import TlsConfig


async def pipeline_events(mothership: Mothership) -> dict[str, int]:
    """Events each pipeline replica processed (its GetStats), to show the balancing."""
    operator = TlsConfig.model_validate(tls(Path(mothership.pki), "operator-admin"))
    counts = {}
    for service in mothership.by_role("pipeline"):
        async with open_channel([service.address], operator) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            stats = await stub.GetStats(pipeline_pb2.PipelineServiceGetStatsRequest(), timeout=10)
        counts[service.role] = stats.events
    return counts


async def exactly_once(
    mothership: Mothership, server: PgServer, fleet: Fleet, events: int
) -> dict[str, Any]:
    """Every agent's backlog through 2 ingest + 2 pipeline replicas; count what is stored."""
    specs = fleet.specs(mothership.ingest_addresses, "backlog", events=events)
    phase = await run_phase("scale-out 2+2", mothership, server, specs, None)
    stored = await count_events(mothership.store)
    return {
        "ingests": len(mothership.by_role("ingest")),
        "pipelines": len(mothership.by_role("pipeline")),
        "agents": fleet.agents,
        "appended": phase.appended,
        "acked": phase.acked,
        "rows": stored.rows,
        "distinct_ids": stored.distinct_ids,
        "still_spooled": phase.still_spooled,
        "per_pipeline": await pipeline_events(mothership),
        "events_per_s": phase.events_per_s,
        "exactly_once": phase.appended == phase.acked == stored.rows == stored.distinct_ids
        and phase.still_spooled == 0,
        "errors": phase.errors,
    }


def slope_mb_per_min(series: list[tuple[float, float]]) -> float:
    """Least-squares RSS slope over the second half of the run (warm-up excluded)."""
    half = [point for point in series if point[0] >= series[-1][0] / 2] if series else []
    if len(half) < 2:
        return 0.0
    n = len(half)
    mean_t = sum(t for t, _ in half) / n
    mean_r = sum(r for _, r in half) / n
    spread = sum((t - mean_t) ** 2 for t, _ in half)
    if not spread:
        return 0.0
    return round(sum((t - mean_t) * (r - mean_r) for t, r in half) / spread * 60, 2)


async def many_agents(
    mothership: Mothership, server: PgServer, fleet: Fleet, rate: float, seconds: float
) -> dict[str, Any]:
    specs = fleet.specs(mothership.ingest_addresses, "rate", rate=rate, seconds=seconds)
    phase = await run_phase(f"{fleet.agents} agents", mothership, server, specs, rate)
    stored = await count_events(mothership.store)
    series = phase.rss_series.get("ingest1", [])
    summary = {
        "agents": fleet.agents,
        "offered_per_s": phase.offered_per_s,
        "appended": phase.appended,
        "acked": phase.acked,
        "still_spooled": phase.still_spooled,
        "rows": stored.rows,
        "distinct_ids": stored.distinct_ids,
        "errors": phase.errors,
        "p99_ms": phase.latency_ms["p99"],
        "ingest_rss_first_mb": series[0][1] if series else None,
        "ingest_rss_peak_mb": phase.peak_rss_mb.get("ingest1"),
        "ingest_rss_last_mb": series[-1][1] if series else None,
        "ingest_rss_slope_mb_per_min": slope_mb_per_min(series),
    }
    return {"summary": summary, "phase": asdict(phase)}
