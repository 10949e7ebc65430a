"""The Loki sink through the real StorageService against a local HTTP server that checks the
push format: labels from the low-cardinality set only, the rest in structured metadata,
tenant and credentials, retries on 429/5xx, 400 recorded and not retried, batching, and the
outbox replaying everything once the endpoint is back."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loki_server import FakeLoki
from pg_server import free_tcp_port
from storage_helpers import (
    FAST_RETRY,
    StorageClients,
    event,
    events,
    fast_outbox,
    start_storage,
    write_request,
)
from support import Pki, eventually, eventually_async

from gen.edgebot.v1 import event_pb2, storage_pb2

STATS = storage_pb2.StorageServiceGetStatsRequest()
PASSWORD = "s3cret-loki-password"


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    server = FakeLoki().start()
    yield server
    server.stop()


def loki_sink(url: str, **settings: Any) -> dict[str, Any]:
    return {"type": "loki", "url": url, "batch_wait_s": 0, **FAST_RETRY, **settings}


def sections(tmp_path: Path, *sinks: dict[str, Any]) -> dict[str, Any]:
    return {"sinks": list(sinks), "outbox": fast_outbox(tmp_path)}


async def loki_state(clients: StorageClients) -> storage_pb2.SinkState:
    stats = await clients.operator.GetStats(STATS)
    [state] = [s for s in stats.sinks if s.kind == "loki"]
    return state


async def loki_state_when(
    clients: StorageClients, check: Callable[[storage_pb2.SinkState], bool]
) -> storage_pb2.SinkState:
    """The Loki sink's state once ``check`` holds (its counters move after the push)."""

    async def holds() -> bool:
        return check(await loki_state(clients))

    await eventually_async(holds, what="the Loki sink's state")
    return await loki_state(clients)


def labelled_event(number: int) -> event_pb2.Event:
    return event(
        number,
        severity=event_pb2.SEVERITY_WARNING,
        host="edge-7",
        attributes={"net.src_ip": "192.0.2.7", "user": "alice"},
        tags={"site": "ams", "env": "prod", "geo.country": "NL"},
    )


async def test_a_push_has_loki_s_exact_shape_and_only_low_cardinality_labels(
    pki: Pki, db_path: Path, tmp_path: Path, loki: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "loki-password"
    secret.write_text(PASSWORD + "\n")
    loki.tenant = "acme"
    loki.authorization = "Basic " + base64.b64encode(f"edgebot:{PASSWORD}".encode()).decode()
    sink = loki_sink(loki.url, tenant="acme", username="edgebot", password_file=str(secret))
    caplog.set_level(logging.DEBUG)
    async with start_storage(pki, db_path, **sections(tmp_path, sink)) as app:
        async with StorageClients.connect(pki, app) as clients:
            batch = [labelled_event(2), labelled_event(1), event(3, service="")]
            await clients.service.Write(write_request(batch))
            await eventually(lambda: len(loki.accepted_ids()) == 3, what="3 entries in Loki")
            state = await loki_state_when(clients, lambda s: s.written == 3)
    assert loki.violations == []
    [push] = loki.accepted()
    assert push.headers["x-scope-orgid"] == "acme"
    assert push.headers["content-type"] == "application/json"
    streams = {tuple(sorted(s["stream"].items())): s["values"] for s in push.body["streams"]}
    labelled = {
        "source": "site-a/syslog-udp",
        "type": "syslog",
        "service": "sshd",
        "severity": "warning",
        "site": "ams",
        "env": "prod",
    }
    metadata = {
        "host": "edge-7",
        "net_src_ip": "192.0.2.7",
        "user": "alice",
        "tag_geo_country": "NL",
    }
    assert streams[tuple(sorted(labelled.items()))] == [
        [str(1_700_000_001_000_000_000), "message 1", {"event_id": "ev-000001", **metadata}],
        [str(1_700_000_002_000_000_000), "message 2", {"event_id": "ev-000002", **metadata}],
    ]
    plain = {"source": "site-a/syslog-udp", "type": "syslog", "severity": "informational"}
    assert streams[tuple(sorted(plain.items()))] == [
        [str(1_700_000_003_000_000_000), "message 3", {"event_id": "ev-000003", "host": "router-1"}]
    ]
    assert (state.health, state.written, state.failed) == (storage_pb2.SINK_HEALTH_UP, 3, 0)
    assert PASSWORD not in caplog.text


async def test_json_lines_without_structured_metadata_keep_every_field(
    pki: Pki, db_path: Path, tmp_path: Path, loki: FakeLoki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_LOKI_TOKEN", "token-123")
    loki.authorization = "Bearer token-123"
    sink = loki_sink(
        loki.url,
        line_format="json",
        structured_metadata=False,
        labels=["type", "service"],
        gzip=True,
        bearer_token_env="TEST_LOKI_TOKEN",
    )
    async with start_storage(pki, db_path, **sections(tmp_path, sink)) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request([labelled_event(1)]))
            await eventually(lambda: len(loki.accepted()) == 1, what="a push")
    assert loki.violations == []
    [push] = loki.accepted()
    assert push.headers["content-encoding"] == "gzip"
    [(labels, value)] = push.entries()
    assert labels == {"type": "syslog", "service": "sshd"}
    assert len(value) == 2
    document = json.loads(value[1])
    assert (document["id"], document["host"], document["attributes"]["net.src_ip"]) == (
        "ev-000001",
        "edge-7",
        "192.0.2.7",
    )


async def test_429_and_5xx_are_retried_until_loki_takes_the_push(
    pki: Pki, db_path: Path, tmp_path: Path, loki: FakeLoki
) -> None:
    loki.answer(429, 503, 500)
    async with start_storage(pki, db_path, **sections(tmp_path, loki_sink(loki.url))) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(events(range(4))))
            await eventually(lambda: len(loki.accepted()) == 1, what="the fourth attempt")
            state = await loki_state_when(clients, lambda s: s.written == 4)
    assert [r.status for r in loki.received] == [429, 503, 500, 204]
    assert all(r.body == loki.received[0].body for r in loki.received)
    assert loki.accepted_ids() == [f"ev-{n:06d}" for n in range(4)]
    assert (state.failed, state.written, state.rejected) == (3, 4, 0)
    assert "loki answered 500: scripted 500" in state.last_error
    assert state.health == storage_pb2.SINK_HEALTH_UP


async def test_a_400_is_recorded_and_not_retried(
    pki: Pki, db_path: Path, tmp_path: Path, loki: FakeLoki
) -> None:
    loki.answer(400, text="entry for stream '{type=\"syslog\"}' has timestamp too old")
    async with start_storage(pki, db_path, **sections(tmp_path, loki_sink(loki.url))) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(events(range(3))))

            async def refused() -> bool:
                return (await loki_state(clients)).rejected == 3

            await eventually_async(refused, what="3 events counted as rejected")
            await clients.service.Write(write_request(events(range(3, 5))))
            await eventually(lambda: len(loki.accepted()) == 1, what="the next batch")
            state = await loki_state_when(clients, lambda s: s.written == 2 and not s.outbox_depth)
    assert [r.status for r in loki.received] == [400, 204]
    assert loki.accepted_ids() == ["ev-000003", "ev-000004"]
    assert (state.rejected, state.failed, state.written, state.outbox_depth) == (3, 0, 2, 0)
    assert "loki answered 400: entry for stream" in state.last_error
    assert "timestamp too old" in state.last_error


async def test_the_outbox_replays_everything_once_loki_is_back(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    port = free_tcp_port()
    sink = loki_sink(f"http://127.0.0.1:{port}", timeout_s=1)
    async with start_storage(pki, db_path, **sections(tmp_path, sink)) as app:
        async with StorageClients.connect(pki, app) as clients:
            for start in range(0, 50, 10):
                answer = await clients.service.Write(
                    write_request(events(range(start, start + 10)))
                )
                assert answer.written == 10

            async def down_and_behind() -> bool:
                state = await loki_state(clients)
                return state.health == storage_pb2.SINK_HEALTH_DOWN and state.outbox_depth == 50

            await eventually_async(down_and_behind, what="Loki DOWN with 50 events waiting")
            assert "ConnectError" in (await loki_state(clients)).last_error
            loki = FakeLoki(port=port).start()
            try:
                await eventually(lambda: len(loki.accepted_ids()) == 50, timeout_s=10)
                state = await loki_state_when(
                    clients,
                    lambda s: s.outbox_depth == 0 and s.health == storage_pb2.SINK_HEALTH_UP,
                )
            finally:
                loki.stop()
    assert loki.violations == []
    assert loki.accepted_ids() == [f"ev-{n:06d}" for n in range(50)]
    assert state.written == 50


async def test_pushes_fill_up_by_size_and_leave_after_the_wait(
    pki: Pki, db_path: Path, tmp_path: Path, loki: FakeLoki
) -> None:
    sink = loki_sink(loki.url, batch_max_events=10, batch_wait_s=0.5)
    async with start_storage(pki, db_path, **sections(tmp_path, sink)) as app:
        async with StorageClients.connect(pki, app) as clients:
            written_at = time.monotonic()
            for start in range(0, 25, 5):
                await clients.service.Write(write_request(events(range(start, start + 5))))
            await eventually(lambda: len(loki.accepted_ids()) == 25, what="25 entries")
            waited = time.monotonic() - written_at
    assert [len(push.entries()) for push in loki.accepted()] == [10, 10, 5]
    assert waited >= 0.45
