"""`edgebot export`: create, list, get, download and delete exports of the anomaly service."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format

from edgebot.connect import operator_channel
from edgebot.events import SEVERITY_NAMES, build_filter
from edgebot.output import (
    add_command_flags,
    human_bytes,
    parse_size,
    print_help,
    rpc_failed,
    table,
    to_json,
    wants_json,
    when,
)
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc

DATASETS = {
    "events": anomaly_pb2.EXPORT_DATASET_EVENTS,
    "anomalies": anomaly_pb2.EXPORT_DATASET_ANOMALIES,
    "labels": anomaly_pb2.EXPORT_DATASET_LABELS,
}
DATASET_NAMES = {value: name for name, value in DATASETS.items()}
FILE_FORMATS = {
    "jsonl": anomaly_pb2.EXPORT_FORMAT_JSONL,
    "csv": anomaly_pb2.EXPORT_FORMAT_CSV,
    "parquet": anomaly_pb2.EXPORT_FORMAT_PARQUET,
}
STATE_NAMES = {
    anomaly_pb2.EXPORT_STATE_PENDING: "pending",
    anomaly_pb2.EXPORT_STATE_RUNNING: "running",
    anomaly_pb2.EXPORT_STATE_SUCCEEDED: "succeeded",
    anomaly_pb2.EXPORT_STATE_FAILED: "failed",
}
FINISHED = (anomaly_pb2.EXPORT_STATE_SUCCEEDED, anomaly_pb2.EXPORT_STATE_FAILED)
LIST_HEADER = ("ID", "STATE", "PROGRESS", "ROWS", "SIZE", "PARTS", "CREATED (UTC)", "DATASETS")
REPORT_FILE = "report.json"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export", help="export events, anomalies and operator labels (for training)"
    )
    commands = parser.add_subparsers(title="export commands", metavar="COMMAND")

    create = commands.add_parser(
        "create",
        help="start an export (returns its id at once; --wait follows it)",
        description="Times accept ISO 8601 or an age such as 15m, 2h, 7d. Event filters "
        "select events; anomalies and labels take the time range, hosts, min severity and "
        "--agent. Labels are always CSV (id,...,label) — what `edgebot train --labels` reads.",
    )
    create.add_argument("--dataset", action="append", required=True, choices=sorted(DATASETS))
    create.add_argument("--since", help="start time or age (default: everything)")
    create.add_argument("--until", help="end time or age (exclusive)")
    create.add_argument("--type", action="append", default=[], dest="types")
    create.add_argument("--source", action="append", default=[], dest="sources")
    create.add_argument("--host", action="append", default=[], dest="hosts")
    create.add_argument("--service", action="append", default=[], dest="services")
    create.add_argument("--min-severity", choices=SEVERITY_NAMES)
    create.add_argument("--text", help="case-insensitive substring of the message")
    create.add_argument("--tag", action="append", default=[], help="KEY=VALUE (repeatable)")
    create.add_argument("--attr", action="append", default=[], help="KEY=VALUE (repeatable)")
    create.add_argument("--agent", action="append", default=[], dest="agents",
                        help="anomalies and labels of this agent only (repeatable)")  # fmt: skip
    create.add_argument("--file-format", choices=sorted(FILE_FORMATS), default="jsonl")
    create.add_argument("--gzip", action="store_true", help="gzip the parts")
    create.add_argument("--batch-size", type=int, default=0, help="rows per batch")
    create.add_argument(
        "--max-part-size", type=parse_size, default=0, help="split parts at this size (10M)"
    )
    _wait_flags(create)
    add_command_flags(create, run_create)

    listing = commands.add_parser("list", help="exports, newest first")
    listing.add_argument("--limit", type=int, default=50)
    add_command_flags(listing, run_list)

    get = commands.add_parser("get", help="one export: state, parts, validation report")
    get.add_argument("id")
    _wait_flags(get)
    add_command_flags(get, run_get)

    download = commands.add_parser(
        "download", help="download an export's parts (checksums verified) and its report"
    )
    download.add_argument("id")
    download.add_argument("--out", type=Path, help="folder to write into (default: ./<id>)")
    download.add_argument("--part", type=int, action="append", help="only this part index")
    download.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    add_command_flags(download, run_download)

    delete = commands.add_parser("delete", help="delete an export and its files")
    delete.add_argument("id")
    add_command_flags(delete, run_delete)
    parser.set_defaults(handler=lambda args: print_help(parser))


PROGRESS_HELP = "show progress on stderr even when it is not a terminal"


def _wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="follow it until it finishes")
    parser.add_argument("--progress", action="store_true", help=PROGRESS_HELP)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between updates")


def _stub(channel: grpc.aio.Channel) -> anomaly_pb2_grpc.AnomalyServiceAsyncStub:
    return anomaly_pb2_grpc.AnomalyServiceStub(channel)


def create_request(args: argparse.Namespace) -> anomaly_pb2.CreateExportRequest:
    args.follow = False  # build_filter's flag: an export is always a bounded query
    return anomaly_pb2.CreateExportRequest(
        spec=anomaly_pb2.ExportSpec(
            datasets=[DATASETS[d] for d in args.dataset],
            filter=build_filter(args),
            format=FILE_FORMATS[args.file_format],
            gzip=args.gzip,
            batch_size=args.batch_size,
            max_part_bytes=args.max_part_size,
            agents=args.agents,
        )
    )


class Progress:
    """One line per update on stderr: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = enabled or self.tty
        self._last = ""

    def show(self, text: str) -> None:
        if not self.enabled or text == self._last:
            return
        self._last = text
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.enabled and self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def progress_line(export: anomaly_pb2.Export, width: int = 24) -> str:
    filled = int(export.progress * width)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"export {export.id} {STATE_NAMES.get(export.state, '?'):<9} [{bar}] "
        f"{export.progress * 100:5.1f}%  {export.rows_written:,} rows  "
        f"{human_bytes(export.bytes_written)}"
    )


async def follow(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub, export_id: str, poll_s: float, show: Progress
) -> anomaly_pb2.Export:
    while True:
        export = (await stub.GetExport(anomaly_pb2.GetExportRequest(id=export_id))).export
        show.show(progress_line(export))
        if export.state in FINISHED:
            show.end()
            return export
        await asyncio.sleep(poll_s)


def print_export(export: anomaly_pb2.Export, as_json: bool) -> None:
    if as_json:
        print(to_json(export))
        return
    report = export.report
    print(f"id:          {export.id}")
    print(f"state:       {STATE_NAMES.get(export.state, '?')}"
          + (f" ({export.error})" if export.error else ""))  # fmt: skip
    print(f"datasets:    {', '.join(DATASET_NAMES[d] for d in export.spec.datasets)}")
    print(f"progress:    {export.progress * 100:.1f}%  {export.rows_written:,} rows  "
          f"{human_bytes(export.bytes_written)}")  # fmt: skip
    print(f"created:     {when(export.create_time)}   finished: {when(export.complete_time)}   "
          f"expires: {when(export.expire_time)}")  # fmt: skip
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(report.row_counts.items())) or "-"
    missing = ", ".join(f"{k} {v:,}" for k, v in sorted(report.missing_fields.items())) or "none"
    print(f"rows:        {counts}")
    print(f"missing:     {missing}")
    print(f"time range:  {when(report.min_time)} .. {when(report.max_time)}")
    if export.parts:
        rows = [
            [str(p.index), p.name, f"{p.rows:,}", human_bytes(p.size_bytes), p.sha256]
            for p in export.parts
        ]
        print(table(("PART", "NAME", "ROWS", "SIZE", "SHA-256"), rows))


async def run_create(args: argparse.Namespace) -> int:
    request = create_request(args)
    async with operator_channel(args, "anomaly") as channel:
        stub = _stub(channel)
        try:
            export = (await stub.CreateExport(request)).export
            if args.wait:
                export = await follow(stub, export.id, args.poll, Progress(args.progress))
        except grpc.aio.AioRpcError as error:
            return rpc_failed("export", error)
    print_export(export, wants_json(args))
    return 1 if export.state == anomaly_pb2.EXPORT_STATE_FAILED else 0


async def run_get(args: argparse.Namespace) -> int:
    async with operator_channel(args, "anomaly") as channel:
        stub = _stub(channel)
        try:
            if args.wait:
                export = await follow(stub, args.id, args.poll, Progress(args.progress))
            else:
                request = anomaly_pb2.GetExportRequest(id=args.id)
                export = (await stub.GetExport(request)).export
        except grpc.aio.AioRpcError as error:
            return rpc_failed("export", error)
    print_export(export, wants_json(args))
    return 0


async def run_list(args: argparse.Namespace) -> int:
    found: list[anomaly_pb2.Export] = []
    request = anomaly_pb2.ListExportsRequest(page_size=min(max(args.limit, 1), 500))
    async with operator_channel(args, "anomaly") as channel:
        try:
            while len(found) < args.limit:
                reply = await _stub(channel).ListExports(request)
                found.extend(reply.exports[: args.limit - len(found)])
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
        except grpc.aio.AioRpcError as error:
            return rpc_failed("export", error)
    if wants_json(args):
        for export in found:
            print(to_json(export))
        return 0
    rows = [
        [e.id, STATE_NAMES.get(e.state, "?"), f"{e.progress * 100:.0f}%", f"{e.rows_written:,}",
         human_bytes(e.bytes_written), str(len(e.parts)), when(e.create_time),
         ",".join(DATASET_NAMES[d] for d in e.spec.datasets)]
        for e in found
    ]  # fmt: skip
    print(table(LIST_HEADER, rows))
    return 0


class ChecksumMismatch(Exception):
    pass


async def download_part(
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub,
    export_id: str,
    part: anomaly_pb2.ExportPart,
    target: Path,
    show: Progress,
) -> None:
    """Stream one part into ``target`` (through a .partial file), verifying its SHA-256."""
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    received = 0
    sent_checksum = ""
    with partial.open("wb") as handle:
        request = anomaly_pb2.DownloadExportRequest(id=export_id, part_index=part.index)
        async for chunk in stub.DownloadExport(request):
            handle.write(chunk.data)
            digest.update(chunk.data)
            received += len(chunk.data)
            show.show(f"{part.name}: {human_bytes(received)} of {human_bytes(part.size_bytes)}")
            if chunk.last:
                sent_checksum = chunk.sha256
    if not sent_checksum or digest.hexdigest() != sent_checksum or sent_checksum != part.sha256:
        partial.unlink()
        raise ChecksumMismatch(f"{part.name}: the downloaded bytes do not match the checksum")
    partial.replace(target)


async def run_download(args: argparse.Namespace) -> int:
    out: Path = args.out or Path(args.id)
    show = Progress(args.progress)
    async with operator_channel(args, "anomaly") as channel:
        stub = _stub(channel)
        try:
            export = (await stub.GetExport(anomaly_pb2.GetExportRequest(id=args.id))).export
            parts = [p for p in export.parts if args.part is None or p.index in args.part]
            if args.part and len(parts) != len(set(args.part)):
                print(f"edgebot export: export {args.id} has parts "
                      f"0..{len(export.parts) - 1}", file=sys.stderr)  # fmt: skip
                return 2
            await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
            for part in parts:
                await download_part(stub, args.id, part, out / part.name, show)
        except grpc.aio.AioRpcError as error:
            show.end()
            return rpc_failed("export", error)
        except ChecksumMismatch as error:
            show.end()
            print(f"edgebot export: {error}", file=sys.stderr)
            return 1
    show.end()
    report = json_format.MessageToDict(export, preserving_proto_field_name=True)
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    await asyncio.to_thread((out / REPORT_FILE).write_text, text)
    written = [str(out / p.name) for p in parts] + [str(out / REPORT_FILE)]
    if wants_json(args):
        print(json.dumps({"id": args.id, "files": written}))
    else:
        for path in written:
            print(path)
    return 0


async def run_delete(args: argparse.Namespace) -> int:
    async with operator_channel(args, "anomaly") as channel:
        try:
            await _stub(channel).DeleteExport(anomaly_pb2.DeleteExportRequest(id=args.id))
        except grpc.aio.AioRpcError as error:
            return rpc_failed("export", error)
    print(f"export {args.id} deleted", file=sys.stderr)
    return 0
