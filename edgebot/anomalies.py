"""`edgebot anomalies` (list, get, update) and `edgebot alerts` (replay, or --follow)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from edgebot.connect import operator_channel
from edgebot.events import SEVERITY_NAMES, parse_time
from edgebot.output import (
    add_command_flags,
    print_help,
    rpc_failed,
    table,
    to_json,
    wants_json,
    when,
)
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2
from mesh.backoff import backoff_delay
from mesh.timeutil import ns_to_ts

STATUSES = {
    "open": anomaly_pb2.ANOMALY_STATUS_OPEN,
    "acknowledged": anomaly_pb2.ANOMALY_STATUS_ACKNOWLEDGED,
    "resolved": anomaly_pb2.ANOMALY_STATUS_RESOLVED,
}
STATUS_NAMES = {value: name for name, value in STATUSES.items()}
LABELS = {
    "true-positive": anomaly_pb2.OPERATOR_LABEL_TRUE_POSITIVE,
    "false-positive": anomaly_pb2.OPERATOR_LABEL_FALSE_POSITIVE,
    "none": anomaly_pb2.OPERATOR_LABEL_UNSPECIFIED,
}
LABEL_NAMES = {value: name for name, value in LABELS.items()}
KIND_NAMES = {anomaly_pb2.ALERT_KIND_NEW: "new", anomaly_pb2.ALERT_KIND_ESCALATED: "escalated"}
# Ends of a watch stream that a follower survives by reconnecting after its last alert.
RECONNECT_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
ANOMALY_HEADER = ("TIME (UTC)", "LEVEL", "AGENT", "TYPE", "HOST", "COUNT", "STATUS", "LABEL",
                  "ID")  # fmt: skip
ALERT_HEADER = ("ALERT", "TIME (UTC)", "KIND", "LEVEL", "AGENT", "TYPE", "HOST", "COUNT",
                "DESCRIPTION")  # fmt: skip


def severity_value(name: str) -> event_pb2.Severity.ValueType:
    return event_pb2.Severity.ValueType(SEVERITY_NAMES.index(name) + 1)


def _level(severity: int) -> str:
    return SEVERITY_NAMES[severity - 1] if severity else "-"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "anomalies", help="list, show and update anomalies (ack, resolve, label)"
    )
    commands = parser.add_subparsers(title="anomalies commands", metavar="COMMAND")

    listing = commands.add_parser("list", help="anomalies, newest first")
    listing.add_argument("--agent", action="append", default=[], dest="agents")
    listing.add_argument("--host", action="append", default=[], dest="hosts")
    listing.add_argument("--status", action="append", default=[], choices=sorted(STATUSES))
    listing.add_argument("--min-severity", choices=SEVERITY_NAMES)
    listing.add_argument("--since", help="start time or age such as 2h (default: all)")
    listing.add_argument("--until", help="end time or age (exclusive)")
    listing.add_argument("--limit", type=int, default=50, help="most anomalies to print")
    add_command_flags(listing, run_list)

    get = commands.add_parser("get", help="one anomaly in full")
    get.add_argument("id")
    add_command_flags(get, run_get)

    update = commands.add_parser(
        "update",
        help="acknowledge, resolve (with notes) or reopen an anomaly, or label it",
        description="Labels are kept as training labels (edgebot export --dataset labels).",
    )
    update.add_argument("id")
    status = update.add_mutually_exclusive_group()
    status.add_argument("--ack", action="store_const", const="acknowledged", dest="status")
    status.add_argument("--resolve", action="store_const", const="resolved", dest="status")
    status.add_argument("--reopen", action="store_const", const="open", dest="status")
    update.add_argument("--resolution", help="resolution status text, e.g. fixed, expected")
    update.add_argument("--notes", help="operator notes")
    update.add_argument("--label", choices=sorted(LABELS), help="operator verdict")
    add_command_flags(update, run_update)
    parser.set_defaults(handler=lambda args: print_help(parser))


def add_alerts_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "alerts",
        help="stored alerts, or --follow new ones (resumes after a disconnect)",
        description="Without --follow: the alerts after --after (default: all stored), then "
        "exit once the stream is idle. With --follow: live alerts (after --after, if given); "
        "a dropped stream is reopened after the last alert received, so none is missed.",
    )
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new alerts")
    parser.add_argument("--after", default="", help="alert id to resume after")
    parser.add_argument("--min-severity", choices=SEVERITY_NAMES)
    parser.add_argument("--agent", action="append", default=[], dest="agents")
    parser.add_argument("--host", action="append", default=[], dest="hosts")
    parser.add_argument("--max-alerts", type=int, help="exit after printing this many alerts")
    parser.add_argument(
        "--heartbeat", type=float, default=15.0, help="seconds between keep-alives (follow)"
    )
    add_command_flags(parser, run_alerts)


def _stub(channel: grpc.aio.Channel) -> anomaly_pb2_grpc.AnomalyServiceAsyncStub:
    return anomaly_pb2_grpc.AnomalyServiceStub(channel)


def anomaly_row(a: anomaly_pb2.Anomaly) -> list[str]:
    return [when(a.time), _level(a.severity), a.agent, a.type, a.host or "-", str(a.count),
            STATUS_NAMES.get(a.status, "-"), LABEL_NAMES.get(a.label, "-"), a.id]  # fmt: skip


def list_request(args: argparse.Namespace) -> anomaly_pb2.ListAnomaliesRequest:
    now = dt.datetime.now(dt.UTC)
    request = anomaly_pb2.ListAnomaliesRequest(
        agents=args.agents,
        hosts=args.hosts,
        statuses=[STATUSES[s] for s in args.status],
        page_size=min(max(args.limit, 1), 500),
    )
    if args.min_severity:
        request.min_severity = severity_value(args.min_severity)
    if args.since:
        ns_to_ts(parse_time(args.since, now), request.start_time)
    if args.until:
        ns_to_ts(parse_time(args.until, now), request.end_time)
    return request


async def run_list(args: argparse.Namespace) -> int:
    request = list_request(args)
    found: list[anomaly_pb2.Anomaly] = []
    async with operator_channel(args, "anomaly") as channel:
        try:
            while len(found) < args.limit:
                reply = await _stub(channel).ListAnomalies(request)
                found.extend(reply.anomalies[: args.limit - len(found)])
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
        except grpc.aio.AioRpcError as error:
            return rpc_failed("anomalies", error)
    if wants_json(args):
        for anomaly in found:
            print(to_json(anomaly))
    else:
        print(table(ANOMALY_HEADER, [anomaly_row(a) for a in found]))
        print(f"({len(found)} anomalies)", file=sys.stderr)
    return 0


def print_anomaly(anomaly: anomaly_pb2.Anomaly, as_json: bool) -> None:
    if as_json:
        print(to_json(anomaly))
        return
    fields = [
        ("id", anomaly.id), ("agent", anomaly.agent), ("type", anomaly.type),
        ("host", anomaly.host or "-"), ("severity", _level(anomaly.severity)),
        ("confidence", f"{anomaly.confidence:.2f}"),
        ("status", STATUS_NAMES.get(anomaly.status, "-")),
        ("label", LABEL_NAMES.get(anomaly.label, "-")), ("resolution", anomaly.resolution or "-"),
        ("notes", anomaly.notes or "-"), ("count", str(anomaly.count)),
        ("first seen", when(anomaly.first_seen_time)), ("last seen", when(anomaly.last_seen_time)),
        ("model", anomaly.model_version or "-"), ("description", anomaly.description),
        ("features", ", ".join(f"{k}={v:g}" for k, v in sorted(anomaly.features.items())) or "-"),
        ("events", f"{len(anomaly.event_ids)} ids"),
    ]  # fmt: skip
    for name, value in fields:
        print(f"{name + ':':<13}{value}")


async def run_get(args: argparse.Namespace) -> int:
    async with operator_channel(args, "anomaly") as channel:
        try:
            reply = await _stub(channel).GetAnomaly(anomaly_pb2.GetAnomalyRequest(id=args.id))
        except grpc.aio.AioRpcError as error:
            return rpc_failed("anomalies", error)
    print_anomaly(reply.anomaly, wants_json(args))
    return 0


def update_request(args: argparse.Namespace) -> anomaly_pb2.UpdateAnomalyRequest:
    request = anomaly_pb2.UpdateAnomalyRequest(id=args.id, update_mask=FieldMask())
    if args.status:
        request.status = STATUSES[args.status]
        request.update_mask.paths.append("status")
    for name in ("resolution", "notes"):
        if getattr(args, name) is not None:
            setattr(request, name, getattr(args, name))
            request.update_mask.paths.append(name)
    if args.label:
        request.label = LABELS[args.label]
        request.update_mask.paths.append("label")
    return request


async def run_update(args: argparse.Namespace) -> int:
    request = update_request(args)
    if not request.update_mask.paths:
        print(
            "edgebot anomalies update: nothing to change; give --ack, --resolve, --reopen, "
            "--resolution, --notes or --label",
            file=sys.stderr,
        )
        return 2
    async with operator_channel(args, "anomaly") as channel:
        try:
            reply = await _stub(channel).UpdateAnomaly(request)
        except grpc.aio.AioRpcError as error:
            return rpc_failed("anomalies", error)
    print_anomaly(reply.anomaly, wants_json(args))
    return 0


def alert_row(alert: anomaly_pb2.Alert) -> list[str]:
    a = alert.anomaly
    return [alert.alert_id, when(alert.time), KIND_NAMES.get(alert.kind, "-"), _level(a.severity),
            a.agent, a.type, a.host or "-", str(a.count), a.description]  # fmt: skip


class AlertPrinter:
    """Prints alerts and remembers the stream position to resume after: the last alert
    printed, or a later id a heartbeat vouched for (alerts the filter skipped)."""

    def __init__(self, as_json: bool, limit: int | None, after: str) -> None:
        self.as_json = as_json
        self.limit = limit
        self.printed = 0
        self.position = after
        self._header = not as_json

    def heartbeat(self, beat: anomaly_pb2.Heartbeat) -> None:
        if beat.last_alert_id and int(beat.last_alert_id) > int(self.position or 0):
            self.position = beat.last_alert_id

    @property
    def done(self) -> bool:
        return self.limit is not None and self.printed >= self.limit

    def print(self, alert: anomaly_pb2.Alert) -> None:
        if self._header:
            print(table(ALERT_HEADER, [list(ALERT_HEADER)]).splitlines()[0], flush=True)
            self._header = False
        line = to_json(alert) if self.as_json else "  ".join(alert_row(alert))
        print(line, flush=True)
        self.printed += 1
        self.position = alert.alert_id


def watch_request(args: argparse.Namespace, after: str) -> anomaly_pb2.WatchAlertsRequest:
    heartbeat = Duration()
    heartbeat.FromTimedelta(dt.timedelta(seconds=args.heartbeat))
    request = anomaly_pb2.WatchAlertsRequest(
        agents=args.agents, hosts=args.hosts, after_alert_id=after,
        heartbeat_interval=heartbeat,
    )  # fmt: skip
    if args.min_severity:
        request.min_severity = severity_value(args.min_severity)
    return request


async def _watch(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub,
    request: anomaly_pb2.WatchAlertsRequest,
    printer: AlertPrinter,
    stop_when_idle: bool,
) -> None:
    """One stream until it ends, the limit is reached, or (``stop_when_idle``) the first
    heartbeat, which the server sends as soon as the replay is over."""
    stream = stub.WatchAlerts(request)
    try:
        async for response in stream:
            if response.HasField("alert"):
                printer.print(response.alert)
                if printer.done:
                    return
            else:
                printer.heartbeat(response.heartbeat)
                if stop_when_idle:
                    return
    finally:
        stream.cancel()


async def run_alerts(args: argparse.Namespace) -> int:
    if args.after and not args.after.isdigit():
        print(f"edgebot alerts: --after {args.after!r} is not an alert id", file=sys.stderr)
        return 2
    if args.heartbeat <= 0:
        print("edgebot alerts: --heartbeat must be positive", file=sys.stderr)
        return 2
    async with operator_channel(args, "anomaly") as channel:
        stub = _stub(channel)
        if not args.follow:
            printer = AlertPrinter(wants_json(args), args.max_alerts, args.after or "0")
            try:
                await _watch(stub, watch_request(args, printer.position), printer, True)
            except grpc.aio.AioRpcError as error:
                return rpc_failed("alerts", error)
            return 0
        printer = AlertPrinter(wants_json(args), args.max_alerts, args.after)
        return await _follow(stub, args, printer)


async def _follow(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub, args: argparse.Namespace, printer: AlertPrinter
) -> int:
    failures = 0
    while not printer.done:
        before = printer.position
        try:
            await _watch(stub, watch_request(args, printer.position), printer, False)
            reason = "the stream ended"
        except grpc.aio.AioRpcError as error:
            if error.code() not in RECONNECT_CODES:
                return rpc_failed("alerts", error)
            reason = f"{error.code().name}: {error.details()}"
        if printer.done:
            break
        failures = 0 if printer.position != before else failures + 1
        delay = backoff_delay(failures, 0.2, 10.0)
        print(
            f"edgebot alerts: {reason}; reconnecting after alert {printer.position or '(none)'} "
            f"in {delay:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        await asyncio.sleep(delay)
    return 0
