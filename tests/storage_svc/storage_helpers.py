"""Events, batches and clients for the storage service tests."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pg_server import PgSchema
from prometheus_client import REGISTRY
from support import Pki, make_config, secure_channel

from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh.app import running
from mesh.config import TlsConfig
from mesh.timeutil import NS_PER_S, ns_to_ts
from storage_svc import StorageApp, StorageServiceConfig, build

BASE_NS = 1_700_000_000 * NS_PER_S
_batch_numbers = itertools.count(1)


Store = Path | PgSchema
"""Where a test's events live: a SQLite file, or a schema in a PostgreSQL database."""


def sink_kind(store: Store) -> str:
    return "sqlite" if isinstance(store, Path) else "postgres"


def storage_config(pki: Pki, store: Store, **sections: Any) -> StorageServiceConfig:
    if isinstance(store, Path):
        sqlite = {"path": str(store), "busy_timeout_ms": 100, **sections.pop("sqlite", {})}
        return make_config(StorageServiceConfig, pki, "storage", sqlite=sqlite, **sections)
    postgres = {
        "dsn": store.dsn,
        "schema_name": store.schema,
        "pool_min_size": 1,
        "pool_max_size": 4,
        "connect_timeout_s": 2,
        "command_timeout_s": 5,
        "tail_poll_interval_s": 0.1,
        **sections.pop("postgres", {}),
    }
    return make_config(
        StorageServiceConfig,
        pki,
        "storage",
        storage={"primary": "postgres"},
        postgres=postgres,
        **sections,
    )


@contextlib.asynccontextmanager
async def start_storage(pki: Pki, store: Store, **sections: Any) -> AsyncIterator[StorageApp]:
    app = build(storage_config(pki, store, **sections))
    async with running(app):
        yield app


def fast_outbox(directory: Path, **settings: Any) -> dict[str, Any]:
    """An outbox section in ``directory`` that wakes and reports quickly."""
    return {
        "path": str(directory / "outbox.db"),
        "poll_interval_s": 0.05,
        "stats_interval_s": 0.05,
        **settings,
    }


FAST_RETRY = {"retry_initial_s": 0.05, "retry_max_s": 0.2}


def file_sink(directory: Path, name: str = "archive", **settings: Any) -> dict[str, Any]:
    return {"type": "file", "name": name, "directory": str(directory), **FAST_RETRY, **settings}


def jsonl_documents(directory: Path, prefix: str = "events") -> list[dict[str, Any]]:
    """Every line of the file sink's files (rotated, compressed or not, then the active one)."""
    found: list[dict[str, Any]] = []
    if not directory.is_dir():
        return found
    rotated = sorted(directory.glob(f"{prefix}-*.jsonl*"))
    for path in [*rotated, directory / f"{prefix}.jsonl"]:
        if not path.exists() or path.name.endswith(".tmp"):
            continue
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        found.extend(json.loads(line) for line in raw.splitlines())
    return found


def jsonl_ids(directory: Path, prefix: str = "events") -> list[str]:
    return [document["id"] for document in jsonl_documents(directory, prefix)]


def event(
    number: int,
    *,
    ts_ns: int | None = None,
    severity: event_pb2.Severity.ValueType = event_pb2.SEVERITY_INFORMATIONAL,
    **fields: Any,
) -> event_pb2.Event:
    """Event ``number``: at BASE_NS + number seconds unless ``ts_ns`` is given."""
    values: dict[str, Any] = {
        "id": f"ev-{number:06d}",
        "type": "syslog",
        "source": "site-a/syslog-udp",
        "host": "router-1",
        "service": "sshd",
        "message": f"message {number}",
        **fields,
    }
    made = event_pb2.Event(severity=severity, **values)
    ns_to_ts(BASE_NS + number * NS_PER_S if ts_ns is None else ts_ns, made.time)
    return made


def events(numbers: Iterable[int], **fields: Any) -> list[event_pb2.Event]:
    return [event(number, **fields) for number in numbers]


def write_request(
    batch_events: Sequence[event_pb2.Event], batch_id: str | None = None, **extra: Any
) -> storage_pb2.WriteRequest:
    number = next(_batch_numbers)
    return storage_pb2.WriteRequest(
        batch=event_pb2.EventBatch(
            batch_id=batch_id or f"batch-{number}",
            agent_id="site-a",
            seq=number,
            events=batch_events,
        ),
        **extra,
    )


def ids(found: Iterable[event_pb2.Event]) -> list[str]:
    return [e.id for e in found]


@dataclass
class StorageClients:
    """Stubs as the ingest service, an operator and an agent would hold them."""

    service: storage_pb2_grpc.StorageServiceAsyncStub
    operator: storage_pb2_grpc.StorageServiceAsyncStub
    agent: storage_pb2_grpc.StorageServiceAsyncStub

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, pki: Pki, app: StorageApp) -> AsyncIterator[StorageClients]:
        port = app.runtime.ports.grpc
        channels: list[grpc.aio.Channel] = []

        def stub(tls: TlsConfig) -> storage_pb2_grpc.StorageServiceAsyncStub:
            channels.append(secure_channel(port, tls))
            return storage_pb2_grpc.StorageServiceStub(channels[-1])

        try:
            yield cls(stub(pki.service("ingest")), stub(pki.operator()), stub(pki.agent("site-a")))
        finally:
            for channel in channels:
                await channel.close()


async def query_all(
    stub: storage_pb2_grpc.StorageServiceAsyncStub,
    request: storage_pb2.QueryEventsRequest,
) -> list[event_pb2.Event]:
    found: list[event_pb2.Event] = []
    while True:
        page = await stub.QueryEvents(request)
        found.extend(page.events)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


TailCall = Any  # grpc.aio.UnaryStreamCall has no useful type parameters in the stubs


async def subscribed(
    app: StorageApp, stub: storage_pb2_grpc.StorageServiceAsyncStub, **request: Any
) -> TailCall:
    """Open a tail and wait until the server registered it (so "now" has passed)."""
    before = app.hub.subscriber_count
    call = stub.TailEvents(storage_pb2.TailEventsRequest(**request))
    deadline = time.monotonic() + 5
    while app.hub.subscriber_count == before:
        assert time.monotonic() < deadline, "tail never subscribed"
        await asyncio.sleep(0.005)
    return call


async def receive(call: TailCall, count: int) -> tuple[list[event_pb2.Event], str]:
    """Read responses until ``count`` events arrived; the events and the last cursor."""
    found: list[event_pb2.Event] = []
    cursor = ""
    async with asyncio.timeout(5):
        while len(found) < count:
            response = await call.read()
            assert response is not grpc.aio.EOF
            assert response.events
            found.extend(response.events)
            cursor = response.cursor
    return found, cursor


GROUPS = "mothership_database_group_commit_batches"


def group_counts() -> tuple[float, float]:
    """(transactions, batches) committed through group commit so far in this process."""
    count = REGISTRY.get_sample_value(f"{GROUPS}_count") or 0.0
    total = REGISTRY.get_sample_value(f"{GROUPS}_sum") or 0.0
    return count, total


async def refuse_event(store: PgSchema, event_id: str) -> None:
    """A trigger that fails any transaction inserting ``event_id`` into events."""
    conn = await store.connect()
    try:
        await conn.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.event_id = '{event_id}' THEN RAISE EXCEPTION 'poisoned'; END IF; "
            "RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON events "
            "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
        )
    finally:
        await conn.close()
