"""The `edgebot` command: `edgebot --help` lists every subcommand."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from edgebot import (
    __version__,
    anomalies,
    certs,
    config_check,
    events,
    export,
    health,
    replay,
    serve,
    train,
)
from edgebot.layout import DEFAULT_AGENT_ID, DEFAULT_PORT_BASE, DEFAULT_SYSLOG_PORT, StateDir


def _add_up(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the whole mesh locally (storage, pipeline, ingest, anomaly, one edge agent)",
        description="Starts every service as its own process with dev certificates created "
        "under the state directory on first run; Ctrl-C stops them cleanly.",
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".edgebot"))
    parser.add_argument(
        "--port-base",
        type=int,
        default=DEFAULT_PORT_BASE,
        help="ingest listens on base+1, pipeline +2, storage +3, anomaly +4, agent +5; "
        "health probes on +101.., metrics on +201..",
    )
    parser.add_argument("--syslog-port", type=int, default=DEFAULT_SYSLOG_PORT)
    parser.add_argument("--agent-id", default=DEFAULT_AGENT_ID)
    parser.set_defaults(handler=_run_up)


async def _run_up(args: argparse.Namespace) -> int:
    from edgebot.up import run_up

    return await run_up(StateDir(args.state_dir), args.port_base, args.syslog_port, args.agent_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebot", description="EdgeBot: edge telemetry over mTLS gRPC."
    )
    parser.add_argument("--version", action="version", version=f"edgebot {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_up(subparsers)
    serve.add_parsers(subparsers)
    certs.add_parser(subparsers)
    health.add_parser(subparsers)
    health.add_probe_parser(subparsers)
    events.add_parser(subparsers)
    anomalies.add_parser(subparsers)
    anomalies.add_alerts_parser(subparsers)
    export.add_parser(subparsers)
    config_check.add_parser(subparsers)
    train.add_parser(subparsers)
    replay.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] | None = getattr(
        args, "handler", None
    )
    if handler is None:
        parser.print_help()
        return 2
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
