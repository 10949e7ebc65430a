"""Events: search stored events page by page, and tail new ones (TailEvents as SSE)."""

from __future__ import annotations

import grpc
from aiohttp import web

from anomaly_svc.console.context import BadInput, context, page_size, reply
from anomaly_svc.console.live import EventStream, relay
from anomaly_svc.console.mesh_client import describe
from anomaly_svc.console.views import SEVERITIES, event_json, parse_time, severity_value
from gen.edgebot.v1 import storage_pb2

MAX_TEXT = 500


def _tags(raw: str) -> dict[str, str]:
    tags = {}
    for pair in (p.strip() for p in raw.split(",")):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"tags: write key=value pairs separated by commas (got {pair!r})")
        tags[key.strip()] = value.strip()
    return tags


def event_filter(request: web.Request) -> storage_pb2.EventFilter:
    query = request.query
    severity = query.get("severity", "")
    if severity and severity not in SEVERITIES:
        raise BadInput(f"severity: one of {', '.join(SEVERITIES)}")
    text = query.get("text", "")
    if len(text) > MAX_TEXT:
        raise BadInput(f"text: at most {MAX_TEXT} characters")
    found = storage_pb2.EventFilter(
        hosts=[h.strip() for h in query.get("host", "").split(",") if h.strip()],
        services=[s.strip() for s in query.get("service", "").split(",") if s.strip()],
        min_severity=severity_value(severity) if severity else 0,  # type: ignore[arg-type]
        text=text,
        tags=_tags(query.get("tags", "")),
    )
    for name, target in (("start", found.start_time), ("end", found.end_time)):
        if query.get(name):
            try:
                target.CopyFrom(parse_time(query[name], name))
            except ValueError as exc:
                raise BadInput(str(exc)) from None
    return found


async def search_events(request: web.Request) -> web.Response:
    ctx = context(request)
    order = (
        storage_pb2.SORT_ORDER_OLDEST_FIRST
        if request.query.get("order") == "oldest"
        else storage_pb2.SORT_ORDER_NEWEST_FIRST
    )
    message = storage_pb2.QueryEventsRequest(
        filter=event_filter(request),
        page_size=page_size(request, ctx.config.events_page_size, 1000),
        page_token=request.query.get("page_token", ""),
        order=order,
    )
    response = await ctx.clients.call("storage", ctx.clients.storage.QueryEvents, message)
    return reply(
        {
            "events": [event_json(e) for e in response.events],
            "next_page_token": response.next_page_token,
        }
    )


async def tail_events(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    cursor = request.headers.get("Last-Event-ID", "")
    message = storage_pb2.TailEventsRequest(filter=event_filter(request), start_cursor=cursor)
    async with ctx.live.slot():
        stream = await EventStream.open(request, ctx.config.sse_retry_ms)
        call = ctx.clients.storage.TailEvents(message, metadata=ctx.clients.metadata)

        async def forward(response: storage_pb2.TailEventsResponse) -> None:
            events = [event_json(e) for e in response.events]
            await stream.send("events", events, response.cursor or None)

        await stream.send("state", {"connected": True, "resumed": bool(cursor)})
        try:
            await relay(call, forward, stream, ctx.config.sse_heartbeat_s)
            await stream.send("problem", {"message": "The live tail ended — reconnecting."})
        except grpc.aio.AioRpcError as exc:
            await stream.send("problem", {"message": describe("storage", exc).message})
        finally:
            call.cancel()
        return stream.response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/events", search_events)
    app.router.add_get("/api/events/tail", tail_events)
