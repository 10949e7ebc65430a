"""What the operator commands share: tables on a terminal, JSON when piped; sizes; times."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from edgebot.connect import add_connection_flags
from mesh.timeutil import ns_to_datetime, ts_to_ns

_SIZE = re.compile(r"^(\d+)([KMG]i?B?|B)?$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("auto", "table", "json"), default="auto",
        help="auto: a table on a terminal, JSON lines when piped",
    )  # fmt: skip


def wants_json(args: argparse.Namespace) -> bool:
    return bool(args.format == "json" or (args.format == "auto" and not sys.stdout.isatty()))


def to_json(message: Message) -> str:
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True
    )


def when(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ns_to_datetime(ts_to_ns(ts)).strftime("%Y-%m-%d %H:%M:%S")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns as wide as their widest cell; the last one is left ragged."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def parse_size(text: str) -> int:
    """Bytes from '5000', '64K', '10M', '1G' (binary multiples)."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 65536, 64K, 10M or 1G")
    unit = (match.group(2) or "").upper()[:1]
    return int(match.group(1)) * _SIZE_FACTORS[unit]


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def add_command_flags(parser: argparse.ArgumentParser, handler: object) -> None:
    """--format and the connection flags, and the function that runs the command."""
    add_format_flag(parser)
    add_connection_flags(parser)
    parser.set_defaults(handler=handler)


async def print_help(parser: argparse.ArgumentParser) -> int:
    """What a command group without a subcommand does: show its help, exit 2."""
    parser.print_help()
    return 2


def rpc_failed(command: str, error: grpc.aio.AioRpcError) -> int:
    print(f"edgebot {command}: {error.code().name}: {error.details()}", file=sys.stderr)
    return 1
