"""StorageService.Write into PostgreSQL against raw binary COPY into the same table.

Run: .venv/bin/python -m bench.storage_pg_bench [--events 100000] [--batch 1000]
     [--in-flight 4] [--rounds 3] [--compare-gin]

Starts its own throwaway PostgreSQL (the test suite's tests/pg_server.py) and
measures, in the same run and on the same server:

(a) raw COPY: asyncpg ``copy_records_to_table`` of ready-made records into ``events`` as
    the storage service creates it (same columns, partitions and indexes), one batch per
    transaction, one connection;
(b) Write: the storage service running as its own process (``python -m storage_svc``),
    called over gRPC with mTLS, batches of --batch events, --in-flight calls at a time
    (as ingest keeps several batches in flight), requests serialized beforehand (as ingest
    forwards them);

each into a fresh schema, best of --rounds (other load on a small machine only slows runs).

--compare-gin also times raw COPY without the jsonb GIN indexes and with one GIN over a
whole-event ``data`` document, the original mothership's layout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import yaml

from bench.pg import (
    ROOT,
    PgSchema,
    PgServer,
    event_records,
    prepared_schema,
    raw_copy_rate,
    server_version,
)
from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.timeutil import now_ns, ns_to_ts
from storage_svc.sinks.postgres_rows import EVENT_COLUMNS, Record

from pg_server import free_tcp_port  # isort: skip  (on the path bench.pg sets)
from support import Pki, secure_channel  # isort: skip

SERVICES = ("storage", "ingest")
HOSTS = [f"router-{n}" for n in range(20)]
PROGRAMS = ["sshd", "dnsmasq", "kernel", "hostapd", "netifd", "cron"]


def make_events(count: int) -> list[event_pb2.Event]:
    """Syslog-like events as the edge parser and the enrichment stage leave them."""
    start = now_ns() - count * 1_000_000
    made = []
    for number in range(count):
        program = PROGRAMS[number % len(PROGRAMS)]
        event = event_pb2.Event(
            id=f"bench-{number:09d}",
            type="syslog",
            source="site-a/syslog-udp",
            host=HOSTS[number % len(HOSTS)],
            service=program,
            severity=event_pb2.SEVERITY_INFORMATIONAL,
            message=f"{program}[{1000 + number % 5000}]: session opened for user u{number % 97} "
            f"from 192.168.{number % 256}.{number % 200} port {20000 + number % 40000}",
            attributes={
                "syslog.facility": "auth",
                "syslog.format": "rfc3164",
                "syslog.pid": str(1000 + number % 5000),
                "net.src_ip": f"192.168.{number % 256}.{number % 200}",
            },
            tags={"site": "a", "env": "prod"},
        )
        ns_to_ts(start + number * 1_000_000, event.time)
        ns_to_ts(start + number * 1_000_000 + 5_000_000, event.observed_time)
        made.append(event)
    return made


def batches(items: Sequence[event_pb2.Event], size: int) -> list[Sequence[event_pb2.Event]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def gin_variants(server: PgServer, events: list[event_pb2.Event], size: int) -> None:
    plain = await prepared_schema(server)
    conn = await plain.connect()
    await conn.execute("DROP INDEX events_attributes, events_tags")
    await conn.close()
    chunks = event_records(events, size)
    rate = await raw_copy_rate(plain, chunks, EVENT_COLUMNS)
    print(f"  raw COPY without the jsonb GIN indexes:      {rate:9,.0f} events/s")
    whole = await prepared_schema(server)
    conn = await whole.connect()
    await conn.execute("DROP INDEX events_attributes, events_tags")
    await conn.execute("ALTER TABLE events ADD COLUMN data jsonb")
    await conn.execute("CREATE INDEX events_data ON events USING gin (data jsonb_path_ops)")
    await conn.close()
    with_data = [[(*r, _document(r)) for r in chunk] for chunk in chunks]
    rate = await raw_copy_rate(whole, with_data, (*EVENT_COLUMNS, "data"))
    print(f"  raw COPY, one GIN over a whole 'data' doc:   {rate:9,.0f} events/s")


def _document(record: Record) -> str:
    named = dict(zip(EVENT_COLUMNS, record, strict=True))
    return json.dumps(
        {
            "id": named["event_id"],
            "type": named["type"],
            "source": named["source"],
            "host": named["host"],
            "service": named["service"],
            "severity": named["severity"],
            "message": named["message"],
            "attributes": json.loads(named["attributes"]),
            "tags": json.loads(named["tags"]),
        }
    )


def start_storage_process(
    store: PgSchema, pki: Pki, workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_tcp_port()
    tls = pki.service("storage")
    config = {
        "server": {"port": port, "health_port": None, "metrics_port": None},
        "tls": {
            "ca_file": str(tls.ca_file),
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
        },
        "logging": {"format": "console", "level": "WARNING"},
        "storage": {"primary": "postgres"},
        "postgres": {"dsn": store.dsn, "schema_name": store.schema},
    }
    path = workdir / "storage.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "storage_svc", "--config", str(path)], cwd=ROOT, env=os.environ
    )
    return process, port


async def wait_serving(stub: storage_pb2_grpc.StorageServiceAsyncStub) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await stub.GetStats(storage_pb2.StorageServiceGetStatsRequest())
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def write_requests(groups: Sequence[Sequence[event_pb2.Event]]) -> list[bytes]:
    """Serialized up front, as ingest forwards the batches it received without rebuilding
    them: the figure is the storage service's, not this client's protobuf encoding."""
    return [
        storage_pb2.WriteRequest(
            batch=event_pb2.EventBatch(batch_id=f"b-{n}", agent_id="site-a", seq=n, events=group)
        ).SerializeToString()
        for n, group in enumerate(groups)
    ]


async def write_all(
    channel: grpc.aio.Channel, payloads: list[bytes], in_flight: int, new_events_only: bool
) -> float:
    """Seconds to Write every payload with ``in_flight`` calls at a time."""
    write = channel.unary_unary(
        "/edgebot.v1.StorageService/Write",
        request_serializer=None,
        response_deserializer=storage_pb2.WriteResponse.FromString,
    )
    queue = list(reversed(payloads))

    async def writer() -> None:
        while queue:
            answer = await write(queue.pop())
            assert not answer.duplicate_batch, answer
            assert answer.duplicates == 0 or not new_events_only, answer

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(in_flight)))
    return time.perf_counter() - started


async def write_rate(
    store: PgSchema,
    pki: Pki,
    workdir: Path,
    groups: list[Sequence[event_pb2.Event]],
    in_flight: int,
) -> float:
    payloads = write_requests(groups)
    process, port = start_storage_process(store, pki, workdir)
    channel = secure_channel(port, pki.service("ingest"))
    try:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        await wait_serving(stub)
        elapsed = await write_all(channel, payloads, in_flight, new_events_only=True)
        stats = await stub.GetStats(storage_pb2.StorageServiceGetStatsRequest())
    finally:
        await channel.close()
        process.terminate()
        process.wait(timeout=30)
    assert stats.total_inserts == sum(len(group) for group in groups), stats
    return stats.total_inserts / elapsed


async def main(args: argparse.Namespace) -> None:
    events = make_events(args.events)
    chunks = event_records(events, args.batch)
    groups = batches(events, args.batch)
    server = PgServer.create()
    workdir = Path(tempfile.mkdtemp(prefix="edgebot-bench-"))
    raw_rates, write_rates = [], []
    try:
        server.start()
        pki = Pki(workdir / "pki")
        for _ in range(args.rounds):
            raw_rates.append(
                await raw_copy_rate(await prepared_schema(server), chunks, EVENT_COLUMNS)
            )
            store = await prepared_schema(server)
            write_rates.append(await write_rate(store, pki, workdir, groups, args.in_flight))
        report(args, await server_version(server), max(raw_rates), max(write_rates))
        if args.compare_gin:
            await gin_variants(server, events, args.batch)
    finally:
        server.remove()


def report(args: argparse.Namespace, version: str, raw: float, write: float) -> None:
    print(
        f"{version}, {args.events:,} events, batches of {args.batch:,}, "
        f"{os.cpu_count()} cores, best of {args.rounds} rounds"
    )
    print(f"  (a) raw binary COPY into events:      {raw:9,.0f} events/s")
    print(f"  (b) StorageService.Write over gRPC:   {write:9,.0f} events/s", end="")
    print(f"  (mTLS, {args.in_flight} calls in flight)")
    print(f"  Write / raw COPY: {write / raw:.0%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare-gin", action="store_true")
    asyncio.run(main(parser.parse_args()))
