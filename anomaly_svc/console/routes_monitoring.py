"""Monitoring: the sampled health, stats and series, and anomalies counted over time."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from anomaly_svc.console.context import context, reply
from anomaly_svc.console.mesh_client import MeshError
from anomaly_svc.console.monitoring import bucket_counts
from gen.edgebot.v1 import anomaly_pb2
from mesh.timeutil import NS_PER_S, ts_to_ns

PAGE = 500


async def _detection_times(request: web.Request) -> list[float]:
    """When recent anomalies were first recorded (newest by event time, up to the cap)."""
    ctx = context(request)
    limit = ctx.config.monitoring.max_anomalies
    times: list[float] = []
    token = ""
    while len(times) < limit:
        response = await ctx.clients.call(
            "anomaly",
            ctx.clients.anomaly.ListAnomalies,
            anomaly_pb2.ListAnomaliesRequest(
                page_size=min(PAGE, limit - len(times)), page_token=token
            ),
        )
        times.extend(ts_to_ns(a.create_time) / NS_PER_S for a in response.anomalies)
        token = response.next_page_token
        if not token:
            break
    return times


async def monitoring(request: web.Request) -> web.Response:
    ctx = context(request)
    if ctx.monitor.sampled_at is None:
        await ctx.monitor.sample()
    snapshot: dict[str, Any] = ctx.monitor.snapshot()
    config = ctx.config.monitoring
    try:
        times = await _detection_times(request)
    except MeshError as exc:
        snapshot["problems"] = [*snapshot["problems"], exc.message]
        times = []
    snapshot["anomalies"] = {
        "bucket_s": config.anomaly_bucket_s,
        "counts": bucket_counts(
            times, config.anomaly_bucket_s, config.anomaly_buckets, time.time()
        ),
    }
    snapshot["live_streams"] = ctx.live.open
    return reply(snapshot)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/monitoring", monitoring)
