"""`edgebot replay FILE...`: ship file-output batches to ingest, each stored exactly once.

The batches keep the ids they had in the agent's spool, so the storage ledger answers a
batch that reached the mothership before (streamed, or replayed earlier) as a duplicate.
Each agent's batches go through a spool of their own and the agent's shipper, with its
acks, re-sends and fail-over; with ``--spool-dir`` an interrupted replay resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from edge_agent import AgentConfig, Shipper, Spool
from edge_agent.file_output import ReadReport, ReplayBatch, read_batches
from edge_agent.shipper import ShipStats
from mesh.config import ConfigError, load_config
from mesh.logs import setup_logging


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="ship files written by the agent's file output to ingest (exactly once)",
        description="Reads FILE... (the agent's .jsonl.gz output, closed or cut short by a "
        "crash), and ships every whole batch with its original id through IngestService "
        "using the agent configuration's ingest addresses and certificate. Batches stored "
        "before are acknowledged as duplicates, not stored twice.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--config", type=Path, help="the agent's YAML configuration (ingest addresses, TLS)"
    )
    parser.add_argument(
        "--spool-dir",
        type=Path,
        help="keep the replay spools here, so an interrupted replay resumes (default: a "
        "temporary directory, removed afterwards)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up after this many seconds"
    )
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(AgentConfig, args.config, "agent")
    except ConfigError as exc:
        print(f"edgebot replay: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging, "replay")
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"edgebot replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    report = await asyncio.to_thread(read_batches, args.files)
    _print_read_report(report)
    if args.spool_dir is not None:
        return await _replay(config, report.batches, args.spool_dir, args.timeout)
    with tempfile.TemporaryDirectory(prefix="edgebot-replay-") as scratch:
        return await _replay(config, report.batches, Path(scratch), args.timeout)


async def _replay(
    config: AgentConfig, batches: list[ReplayBatch], spool_dir: Path, timeout_s: float
) -> int:
    by_agent: dict[str, list[ReplayBatch]] = defaultdict(list)
    for batch in batches:
        by_agent[batch.agent_id].append(batch)
    deadline = time.monotonic() + timeout_s
    failed = False
    for agent_id, own in by_agent.items():
        agent_config = config.model_copy(
            update={"agent": config.agent.model_copy(update={"id": agent_id})}
        )
        stats, left = await _ship(agent_config, own, spool_dir / f"replay-{agent_id}.db", deadline)
        print(
            f"agent {agent_id}: {len(own)} batches, {stats.events_accepted} events acknowledged "
            f"({stats.events_duplicate} already stored), {stats.events_rejected} rejected"
            + (f", {left} events NOT shipped (timeout)" if left else "")
        )
        failed = failed or left > 0
    return 1 if failed else 0


async def _ship(
    config: AgentConfig, batches: list[ReplayBatch], path: Path, deadline: float
) -> tuple[ShipStats, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    spool = Spool(path, config.spool.max_bytes)
    await spool.open()
    try:
        for batch in batches:
            await spool.import_batch(batch.batch_id, batch.seq, batch.events)
        shipper = Shipper(config, spool)
        shipper.start()
        await shipper.stop(max(0.0, deadline - time.monotonic()))
        return shipper.stats, spool.events
    finally:
        await spool.close()


def _print_read_report(report: ReadReport) -> None:
    print(f"read {report.lines} lines: {len(report.batches)} whole batches")
    for problem in report.bad_lines[:20]:
        print(f"  skipped line {problem}", file=sys.stderr)
    if len(report.bad_lines) > 20:
        print(f"  ... and {len(report.bad_lines) - 20} more bad lines", file=sys.stderr)
    if report.incomplete_batches:
        print(
            f"  {len(report.incomplete_batches)} batches incomplete (cut by a crash; the "
            "agent's spool still held them and wrote them again): not replayed",
            file=sys.stderr,
        )
