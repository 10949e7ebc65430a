"""`edgebot events`: query stored events, or follow new ones as they are stored."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Iterable

import grpc
from google.protobuf import json_format

from edgebot.connect import add_connection_flags, operator_channel
from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.timeutil import datetime_to_ns, ns_to_datetime, ns_to_ts, ts_to_ns

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "events",
        help="query stored events (or --follow new ones)",
        description="Query events from StorageService. Times accept ISO 8601 or a relative "
        "age such as 15m, 2h, 7d.",
    )
    parser.add_argument("--since", default="1h", help="start time or age (default 1h)")
    parser.add_argument("--until", help="end time or age (exclusive)")
    parser.add_argument("--type", action="append", default=[], dest="types")
    parser.add_argument("--source", action="append", default=[], dest="sources")
    parser.add_argument("--host", action="append", default=[], dest="hosts")
    parser.add_argument("--service", action="append", default=[], dest="services")
    parser.add_argument(
        "--min-severity", choices=SEVERITY_NAMES, help="at least this severe (e.g. warning)"
    )
    parser.add_argument("--text", help="case-insensitive substring of the message")
    parser.add_argument("--tag", action="append", default=[], help="KEY=VALUE (repeatable)")
    parser.add_argument(
        "--attr", action="append", default=[], help="attribute KEY=VALUE (repeatable)"
    )
    parser.add_argument("--limit", type=int, default=50, help="most events to print")
    parser.add_argument("--oldest-first", action="store_true")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    parser.add_argument(
        "--format", choices=("auto", "table", "json"), default="auto",
        help="auto: a table on a terminal, JSON lines when piped",
    )  # fmt: skip
    add_connection_flags(parser)
    parser.set_defaults(handler=run)


def parse_time(text: str, now: dt.datetime) -> int:
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return datetime_to_ns(now - dt.timedelta(seconds=seconds))
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"edgebot events: {text!r} is neither ISO 8601 nor an age like 2h"
        ) from None
    return datetime_to_ns(value if value.tzinfo else value.replace(tzinfo=dt.UTC))


def _pairs(values: Iterable[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgebot events: {flag} expects KEY=VALUE, got {value!r}")
        pairs[key] = item
    return pairs


def build_filter(args: argparse.Namespace) -> storage_pb2.EventFilter:
    now = dt.datetime.now(dt.UTC)
    flt = storage_pb2.EventFilter(
        types=args.types,
        sources=args.sources,
        hosts=args.hosts,
        services=args.services,
        text=args.text or "",
        tags=_pairs(args.tag, "--tag"),
        attributes=_pairs(args.attr, "--attr"),
    )
    if args.min_severity:
        flt.min_severity = event_pb2.Severity.ValueType(SEVERITY_NAMES.index(args.min_severity) + 1)
    if args.since and not args.follow:
        ns_to_ts(parse_time(args.since, now), flt.start_time)
    if args.until:
        ns_to_ts(parse_time(args.until, now), flt.end_time)
    return flt


def event_to_json(event: event_pb2.Event) -> str:
    return json.dumps(
        json_format.MessageToDict(event, preserving_proto_field_name=True), sort_keys=True
    )


def event_to_row(event: event_pb2.Event) -> str:
    when = ns_to_datetime(ts_to_ns(event.time)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    level = SEVERITY_NAMES[event.severity - 1] if event.severity else "-"
    return f"{when}  {level:<7} {event.host[:20]:<20} {event.service[:16]:<16} {event.message}"


def _printer(args: argparse.Namespace) -> tuple[bool, str]:
    as_json = args.format == "json" or (args.format == "auto" and not sys.stdout.isatty())
    header = f"{'TIME (UTC)':<23}  {'LEVEL':<7} {'HOST':<20} {'SERVICE':<16} MESSAGE"
    return as_json, header


async def run(args: argparse.Namespace) -> int:
    as_json, header = _printer(args)
    async with operator_channel(args, "storage") as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        try:
            if args.follow:
                return await _follow(stub, build_filter(args), as_json, header)
            return await _query(stub, args, as_json, header)
        except grpc.aio.AioRpcError as error:
            print(f"edgebot events: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1


async def _query(
    stub: storage_pb2_grpc.StorageServiceAsyncStub,
    args: argparse.Namespace,
    as_json: bool,
    header: str,
) -> int:
    order = (
        storage_pb2.SORT_ORDER_OLDEST_FIRST
        if args.oldest_first
        else storage_pb2.SORT_ORDER_NEWEST_FIRST
    )
    request = storage_pb2.QueryEventsRequest(
        filter=build_filter(args), page_size=min(args.limit, 1000), order=order
    )
    printed = 0
    if not as_json:
        print(header)
    while printed < args.limit:
        response = await stub.QueryEvents(request)
        for event in response.events[: args.limit - printed]:
            print(event_to_json(event) if as_json else event_to_row(event))
            printed += 1
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    if not as_json:
        print(f"({printed} events)", file=sys.stderr)
    return 0


async def _follow(
    stub: storage_pb2_grpc.StorageServiceAsyncStub,
    flt: storage_pb2.EventFilter,
    as_json: bool,
    header: str,
) -> int:
    if not as_json:
        print(header, flush=True)
    async for response in stub.TailEvents(storage_pb2.TailEventsRequest(filter=flt)):
        for event in response.events:
            print(event_to_json(event) if as_json else event_to_row(event), flush=True)
    return 0
