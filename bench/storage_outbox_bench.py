"""What the outbox costs the write path, and how fast secondary sinks drain it.

Run: .venv/bin/python -m bench.storage_outbox_bench [--events 50000] [--batch 1000]
     [--in-flight 4] [--rounds 2]

The storage service runs as its own process on SQLite (its embedded default, WAL,
synchronous=FULL) and is called over gRPC with mTLS, --in-flight calls at a time, requests
serialized beforehand; once without secondary sinks, once with a JSONL file sink, once with a
NATS JetStream sink (a private nats-server -js started here). For each: the Write rate (until
the last ack: the primary's commit plus the outbox's intent and append) and the drain rate
(until the sink took every event, from the first write). Best of --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "storage_svc"), str(ROOT / "tests")]

from nats_server import NatsServer, free_tcp_port  # noqa: E402
from support import Pki, secure_channel  # noqa: E402

from bench.storage_pg_bench import (  # noqa: E402
    batches,
    make_events,
    wait_serving,
    write_all,
    write_requests,
)
from gen.edgebot.v1 import storage_pb2, storage_pb2_grpc  # noqa: E402


def storage_config(pki: Pki, workdir: Path, port: int, sinks: list[dict[str, Any]]) -> Path:
    tls = pki.service("storage")
    config = {
        "server": {"port": port, "health_port": None, "metrics_port": None},
        "tls": {
            "ca_file": str(tls.ca_file),
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
        },
        "logging": {"format": "console", "level": "WARNING"},
        "sqlite": {"path": str(workdir / "events.db")},
        "outbox": {"path": str(workdir / "outbox.db"), "stats_interval_s": 0.1},
        "sinks": sinks,
    }
    path = workdir / "storage.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_process(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "storage_svc", "--config", str(config)], cwd=ROOT, env=os.environ
    )


async def drained(stub: storage_pb2_grpc.StorageServiceAsyncStub) -> bool:
    """Every secondary took every event (called once every write was acknowledged, so
    every event is in the outbox or past it)."""
    stats = await stub.GetStats(storage_pb2.StorageServiceGetStatsRequest())
    return all(s.outbox_depth == 0 for s in stats.sinks if not s.primary)


async def run_once(
    pki: Pki,
    workdir: Path,
    sinks: list[dict[str, Any]],
    groups: Sequence[Sequence[Any]],
    in_flight: int,
) -> tuple[float, float | None]:
    payloads = write_requests(groups)
    total = sum(len(group) for group in groups)
    port = free_tcp_port()
    config = storage_config(pki, workdir, port, sinks)
    process = start_process(config)
    channel = secure_channel(port, pki.service("ingest"))
    try:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        await wait_serving(stub)
        started = time.perf_counter()
        write_s = await write_all(channel, payloads, in_flight, new_events_only=False)
        drain_s = None
        if sinks:
            while True:
                if await drained(stub):
                    break
                await asyncio.sleep(0.05)
            drain_s = time.perf_counter() - started
    finally:
        await channel.close()
        process.terminate()
        process.wait(timeout=30)
    return total / write_s, (total / drain_s if drain_s else None)


def place(sink: dict[str, Any], workdir: Path, round_number: int) -> dict[str, Any]:
    """Each round its own files, and its own NATS stream (the event ids repeat)."""
    if sink["type"] == "file":
        return {**sink, "directory": str(workdir / "files")}
    return {**sink, "stream": f"BENCH{round_number}", "subject_prefix": f"bench{round_number}"}


async def main(args: argparse.Namespace) -> None:
    groups = batches(make_events(args.events), args.batch)
    root = Path(tempfile.mkdtemp(prefix="edgebot-outbox-bench-"))
    pki = Pki(root / "pki")
    nats_dir = root / "nats"
    nats_dir.mkdir()
    nats = NatsServer(nats_dir).start()
    variants: dict[str, list[dict[str, Any]]] = {
        "no secondary sink (no outbox)": [],
        "JSONL file sink": [{"type": "file"}],
        "NATS JetStream sink": [{"type": "nats", "servers": [nats.url]}],
    }
    print(
        f"SQLite primary, {args.events:,} events, batches of {args.batch:,}, "
        f"{args.in_flight} Write calls in flight, {os.cpu_count()} cores, best of {args.rounds}"
    )
    try:
        for label, sinks in variants.items():
            best_write, best_drain = 0.0, 0.0
            for round_number in range(args.rounds):
                workdir = root / f"{label.split()[0]}-{round_number}"
                workdir.mkdir()
                placed = [place(sink, workdir, round_number) for sink in sinks]
                write, drain = await run_once(pki, workdir, placed, groups, args.in_flight)
                best_write = max(best_write, write)
                best_drain = max(best_drain, drain or 0.0)
            drained_text = f", drained {best_drain:9,.0f} events/s" if sinks else ""
            print(f"  {label:32} Write {best_write:9,.0f} events/s{drained_text}")
    finally:
        nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
