"""Anomalies: the filtered list, one anomaly with the events around it, operator actions,
and the live alert stream (WatchAlerts as Server-Sent Events)."""

from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from anomaly_svc.console.audit import audit
from anomaly_svc.console.context import (
    BadInput,
    body,
    context,
    operator,
    page_size,
    reply,
    text_field,
)
from anomaly_svc.console.live import EventStream, relay
from anomaly_svc.console.mesh_client import MeshError, describe
from anomaly_svc.console.views import (
    LABELS,
    SEVERITIES,
    STATUSES,
    agent_json,
    alert_json,
    anomaly_json,
    event_json,
    parse_time,
    severity_value,
)
from gen.edgebot.v1 import anomaly_pb2, storage_pb2
from mesh.timeutil import NS_PER_S, ns_to_ts, ts_to_ns

ACTIONS = ("acknowledge", "resolve", "reopen", "label", "note")


def _list_values(request: web.Request, name: str) -> list[str]:
    return [
        v.strip() for raw in request.query.getall(name, []) for v in raw.split(",") if v.strip()
    ]


def _severity(raw: str, field: str) -> int:
    if not raw:
        return 0
    if raw not in SEVERITIES:
        raise BadInput(f"{field}: one of {', '.join(SEVERITIES)}")
    return severity_value(raw)


def list_request(request: web.Request) -> anomaly_pb2.ListAnomaliesRequest:
    ctx = context(request)
    query = request.query
    statuses = []
    for status in _list_values(request, "status"):
        if status not in STATUSES:
            raise BadInput(f"status: one of {', '.join(STATUSES)}")
        statuses.append(anomaly_pb2.AnomalyStatus.ValueType(STATUSES[status]))
    message = anomaly_pb2.ListAnomaliesRequest(
        agents=_list_values(request, "agent"),
        hosts=_list_values(request, "host"),
        statuses=statuses,
        min_severity=_severity(query.get("severity", ""), "severity"),  # type: ignore[arg-type]
        page_size=page_size(request, ctx.config.anomalies_page_size, 500),
        page_token=query.get("page_token", ""),
    )
    for name, target in (("start", message.start_time), ("end", message.end_time)):
        if query.get(name):
            try:
                target.CopyFrom(parse_time(query[name], name))
            except ValueError as exc:
                raise BadInput(str(exc)) from None
    return message


async def list_anomalies(request: web.Request) -> web.Response:
    clients = context(request).clients
    response = await clients.call("anomaly", clients.anomaly.ListAnomalies, list_request(request))
    return reply(
        {
            "anomalies": [anomaly_json(a) for a in response.anomalies],
            "next_page_token": response.next_page_token,
        }
    )


async def _get(request: web.Request) -> anomaly_pb2.Anomaly:
    clients = context(request).clients
    response = await clients.call(
        "anomaly",
        clients.anomaly.GetAnomaly,
        anomaly_pb2.GetAnomalyRequest(id=request.match_info["anomaly_id"]),
    )
    return response.anomaly


async def _surrounding_events(request: web.Request, anomaly: anomaly_pb2.Anomaly) -> dict[str, Any]:
    ctx = context(request)
    margin = int(ctx.config.context_window_s * NS_PER_S)
    first = ts_to_ns(anomaly.first_seen_time) or ts_to_ns(anomaly.time)
    last = ts_to_ns(anomaly.last_seen_time) or ts_to_ns(anomaly.time)
    query = storage_pb2.QueryEventsRequest(
        filter=storage_pb2.EventFilter(
            hosts=[anomaly.host] if anomaly.host else [],
            start_time=ns_to_ts(max(0, first - margin)),
            end_time=ns_to_ts(last + margin + 1),
        ),
        page_size=ctx.config.context_max_events,
        order=storage_pb2.SORT_ORDER_OLDEST_FIRST,
    )
    try:
        found = await ctx.clients.call("storage", ctx.clients.storage.QueryEvents, query)
    except MeshError as exc:
        return {"events": [], "events_error": exc.message}
    part_of = set(anomaly.event_ids)
    events = [{**event_json(e), "in_anomaly": e.id in part_of} for e in found.events]
    return {"events": events, "events_error": "", "events_truncated": bool(found.next_page_token)}


async def get_anomaly(request: web.Request) -> web.Response:
    anomaly = await _get(request)
    context_events = await _surrounding_events(request, anomaly)
    return reply({"anomaly": anomaly_json(anomaly), **context_events})


def update_request(anomaly_id: str, data: dict[str, Any]) -> anomaly_pb2.UpdateAnomalyRequest:
    action = text_field(data, "action")
    if action not in ACTIONS:
        raise BadInput(f"action: one of {', '.join(ACTIONS)}")
    notes = text_field(data, "notes", max_length=10_000)
    message = anomaly_pb2.UpdateAnomalyRequest(id=anomaly_id)
    paths: list[str] = []
    if action == "acknowledge":
        message.status = anomaly_pb2.ANOMALY_STATUS_ACKNOWLEDGED
        paths.append("status")
    elif action == "reopen":
        message.status = anomaly_pb2.ANOMALY_STATUS_OPEN
        paths.append("status")
    elif action == "resolve":
        message.status = anomaly_pb2.ANOMALY_STATUS_RESOLVED
        message.resolution = text_field(data, "resolution", max_length=200) or "resolved"
        paths += ["status", "resolution"]
    elif action == "label":
        label = text_field(data, "label")
        if label not in ("true_positive", "false_positive"):
            raise BadInput("label: true_positive or false_positive")
        message.label = anomaly_pb2.OperatorLabel.ValueType(LABELS[label])
        paths.append("label")
    if notes or action == "note":
        message.notes = notes
        paths.append("notes")
    message.update_mask.CopyFrom(FieldMask(paths=paths))
    return message


async def update_anomaly(request: web.Request) -> web.Response:
    clients = context(request).clients
    anomaly_id = request.match_info["anomaly_id"]
    message = update_request(anomaly_id, await body(request))
    who = operator(request)
    fields = ",".join(message.update_mask.paths)
    try:
        response = await clients.call("anomaly", clients.anomaly.UpdateAnomaly, message)
    except MeshError as exc:
        audit(who, "update-anomaly", f"failed: {exc.message}", anomaly_id=anomaly_id, fields=fields)
        raise
    audit(who, "update-anomaly", anomaly_id=anomaly_id, fields=fields,
          status=anomaly_json(response.anomaly)["status"],
          label=anomaly_json(response.anomaly)["label"])  # fmt: skip
    return reply({"anomaly": anomaly_json(response.anomaly)})


async def list_agents(request: web.Request) -> web.Response:
    clients = context(request).clients
    response = await clients.call(
        "anomaly", clients.anomaly.ListAgents, anomaly_pb2.ListAgentsRequest()
    )
    return reply({"agents": [agent_json(a) for a in response.agents]})


def _after_alert(request: web.Request) -> str:
    after = request.headers.get("Last-Event-ID") or request.query.get("after", "")
    if after and not after.isdigit():
        raise BadInput("after: the id of an alert this console sent")
    return after


async def alerts_stream(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    after = _after_alert(request)
    async with ctx.live.slot():
        stream = await EventStream.open(request, ctx.config.sse_retry_ms)
        call = ctx.clients.anomaly.WatchAlerts(
            anomaly_pb2.WatchAlertsRequest(
                after_alert_id=after,
                heartbeat_interval=Duration(seconds=int(ctx.config.sse_heartbeat_s) or 1),
            ),
            metadata=ctx.clients.metadata,
        )

        async def forward(response: anomaly_pb2.WatchAlertsResponse) -> None:
            if response.HasField("alert"):
                await stream.send("alert", alert_json(response.alert), response.alert.alert_id)
            else:
                await stream.comment("heartbeat")

        await stream.send("state", {"connected": True, "after": after})
        try:
            await relay(call, forward, stream, ctx.config.sse_heartbeat_s)
            await stream.send("problem", {"message": "The alert stream ended — reconnecting."})
        except grpc.aio.AioRpcError as exc:
            await stream.send("problem", {"message": describe("anomaly", exc).message})
        finally:
            call.cancel()
        return stream.response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/anomalies", list_anomalies)
    app.router.add_get("/api/anomalies/{anomaly_id}", get_anomaly)
    app.router.add_post("/api/anomalies/{anomaly_id}", update_anomaly)
    app.router.add_get("/api/agents", list_agents)
    app.router.add_get("/api/alerts/stream", alerts_stream)
