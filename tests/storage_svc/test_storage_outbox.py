"""The outbox between the primary and the secondary sinks, through the real StorageService:
each stored event reaches every sink once, a sink that is down blocks nothing and catches up,
a crash between the primary's commit and the outbox's loses nothing, the bound is kept."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from storage_helpers import (
    StorageClients,
    Store,
    events,
    fast_outbox,
    file_sink,
    jsonl_ids,
    start_storage,
    storage_config,
    write_request,
)
from support import Pki, eventually, eventually_async, secure_channel

from gen.edgebot.v1 import storage_pb2
from storage_svc import StorageApp
from storage_svc.config import StorageServiceConfig
from storage_svc.outbox import Outbox
from storage_svc.server import sink_health_name
from storage_svc.sinks.base import BatchWrite, Health
from storage_svc.sinks.sqlite import SqliteSink

STATS = storage_pb2.StorageServiceGetStatsRequest()


def with_sinks(tmp_path: Path, *sinks: dict[str, Any], **outbox: Any) -> dict[str, Any]:
    return {"sinks": list(sinks), "outbox": fast_outbox(tmp_path, **outbox)}


async def sink_state(clients: StorageClients, name: str) -> storage_pb2.SinkState:
    stats = await clients.operator.GetStats(STATS)
    [state] = [s for s in stats.sinks if s.name == name]
    return state


async def sink_state_when(
    clients: StorageClients, name: str, check: Callable[[storage_pb2.SinkState], bool]
) -> storage_pb2.SinkState:
    """The sink's state once ``check`` holds (its counters move after the write returns)."""

    async def holds() -> bool:
        return check(await sink_state(clients, name))

    await eventually_async(holds, what=f"the state of {name}")
    return await sink_state(clients, name)


def gauge(name: str, sink: str) -> float:
    return REGISTRY.get_sample_value(name, {"sink": sink}) or 0.0


async def lines_reach(directory: Path, count: int) -> None:
    await eventually(lambda: len(jsonl_ids(directory)) >= count, what=f"{count} lines")


async def sink_serving(app: StorageApp, pki: Pki, name: str) -> int:
    channel = secure_channel(app.runtime.ports.grpc, pki.service("ingest"))
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=sink_health_name(name))
        )
    finally:
        await channel.close()
    status: int = reply.status
    return status


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
async def test_every_stored_event_reaches_the_file_sink_once(
    pki: Pki, store: Store, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    async with start_storage(pki, store, **with_sinks(tmp_path, file_sink(archive))) as app:
        async with StorageClients.connect(pki, app) as clients:
            first = write_request(events(range(0, 5)), batch_id="b-1")
            await clients.service.Write(first)
            again = await clients.service.Write(first)
            overlapping = await clients.service.Write(write_request(events(range(3, 8))))
            await eventually(lambda: len(jsonl_ids(archive)) >= 8, what="8 lines")
            state = await sink_state_when(clients, "archive", lambda s: s.written == 8)
    assert again.duplicate_batch
    assert (overlapping.written, overlapping.duplicates) == (3, 2)
    assert jsonl_ids(archive) == [f"ev-{n:06d}" for n in range(8)]
    assert (state.kind, state.primary, state.health) == ("file", False, storage_pb2.SINK_HEALTH_UP)


async def test_a_sink_that_is_down_blocks_neither_the_primary_nor_another_sink(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    healthy, broken = tmp_path / "healthy", tmp_path / "broken"
    broken.write_text("a file where the sink wants its directory")
    sinks = with_sinks(tmp_path, file_sink(healthy, "healthy"), file_sink(broken, "broken"))
    async with start_storage(pki, db_path, **sinks) as app:
        async with StorageClients.connect(pki, app) as clients:
            for start in range(0, 30, 10):
                answer = await clients.service.Write(
                    write_request(events(range(start, start + 10)))
                )
                assert answer.written == 10
            await eventually(lambda: len(jsonl_ids(healthy)) == 30, what="the healthy sink")

            async def broken_is_down() -> bool:
                state = await sink_state(clients, "broken")
                return state.health == storage_pb2.SINK_HEALTH_DOWN and state.outbox_depth == 30

            await eventually_async(broken_is_down, what="the broken sink DOWN, 30 behind")
            down = await sink_state(clients, "broken")
            assert "cannot open" in down.last_error
            assert down.outbox_lag.ToNanoseconds() > 0

            # The health entries follow the sinks at each monitor pass (stats_interval_s),
            # so both are awaited: one pass may not have run since the healthy sink opened.
            async def entries_follow_the_sinks() -> bool:
                return (
                    await sink_serving(app, pki, "broken"),
                    await sink_serving(app, pki, "healthy"),
                ) == (
                    health_pb2.HealthCheckResponse.NOT_SERVING,
                    health_pb2.HealthCheckResponse.SERVING,
                )

            await eventually_async(
                entries_follow_the_sinks, what="broken NOT_SERVING, healthy SERVING"
            )
            await eventually(
                lambda: (
                    (
                        gauge("edgebot_outbox_depth", "broken"),
                        gauge("edgebot_outbox_depth", "healthy"),
                    )
                    == (30, 0)
                ),
                what="the depth gauges",
            )
            assert gauge("edgebot_outbox_lag_seconds", "broken") > 0

            broken.unlink()
            await eventually(lambda: len(jsonl_ids(broken)) == 30, what="the broken sink back")
            caught_up = await sink_state_when(clients, "broken", lambda s: s.written == 30)
    assert jsonl_ids(broken) == jsonl_ids(healthy)
    assert len(set(jsonl_ids(broken))) == 30
    assert caught_up.health == storage_pb2.SINK_HEALTH_UP
    assert REGISTRY.get_sample_value(
        "mothership_database_writes_total", {"sink": "broken", "result": "ok"}
    )


async def test_the_sinks_health_entries_keep_following_after_a_failed_report(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.write_text("a file where the sink wants its directory")
    sinks = with_sinks(tmp_path, file_sink(broken, "broken"))
    async with start_storage(pki, db_path, **sinks) as app:
        report = app.fanout._on_health
        assert report is not None
        failures = []

        async def fails_once(sink: str, health: Health) -> None:
            if not failures:
                failures.append(sink)
                raise RuntimeError("the health servicer is gone")
            await report(sink, health)

        app.fanout._on_health = fails_once
        broken.unlink()

        async def broken_serving() -> bool:
            status = await sink_serving(app, pki, "broken")
            return status == health_pb2.HealthCheckResponse.SERVING

        await eventually_async(broken_serving, what="SERVING once the sink can open")
    assert failures == ["broken"]


async def test_events_waiting_in_the_outbox_survive_a_restart(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    archive.write_text("not a directory yet")
    sinks = with_sinks(tmp_path, file_sink(archive))
    async with start_storage(pki, db_path, **sinks) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(events(range(12))))
    archive.unlink()
    async with start_storage(pki, db_path, **sinks):
        await eventually(lambda: len(jsonl_ids(archive)) == 12, what="delivery after restart")
    assert jsonl_ids(archive) == [f"ev-{n:06d}" for n in range(12)]


async def test_a_crash_between_the_primary_commit_and_the_outbox_loses_nothing(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    sinks = with_sinks(tmp_path, file_sink(archive))
    config = storage_config(pki, db_path, **sinks)
    # The first life ends after the primary committed "stored" and before the outbox heard
    # of it, while "lost-in-flight" had its intent recorded but never reached the primary.
    await _die_after_primary_commit(config)

    async with start_storage(pki, db_path, **sinks) as app:
        async with StorageClients.connect(pki, app) as clients:
            resent = await clients.service.Write(write_request(events(range(5)), "stored"))
            await clients.service.Write(write_request(events(range(100, 103)), "lost-in-flight"))
            await eventually(lambda: len(jsonl_ids(archive)) >= 8, what="8 lines")
        outbox = app.fanout.outbox
        assert outbox is not None
        assert await outbox.intents() == []
    assert resent.duplicate_batch
    assert sorted(jsonl_ids(archive)) == sorted(
        [f"ev-{n:06d}" for n in range(5)] + [f"ev-{n:06d}" for n in range(100, 103)]
    )


async def _die_after_primary_commit(config: StorageServiceConfig) -> None:
    primary = SqliteSink(config.sqlite, on_commit=lambda stored: None)
    outbox = Outbox(config.outbox, ["archive"])
    await primary.open()
    await outbox.open()
    stored = BatchWrite("stored", "site-a", 1, events(range(5)))
    await outbox.intend(stored)
    await primary.write(stored)
    await outbox.intend(BatchWrite("lost-in-flight", "site-a", 2, events(range(100, 103))))
    await outbox.close()
    await primary.close()


async def test_a_full_outbox_drops_the_oldest_for_the_sink_behind_only(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    healthy, behind = tmp_path / "healthy", tmp_path / "behind"
    behind.write_text("down for now")
    sinks = with_sinks(
        tmp_path, file_sink(healthy, "keeps-up"), file_sink(behind, "behind"), max_events=10
    )
    async with start_storage(pki, db_path, **sinks) as app:
        async with StorageClients.connect(pki, app) as clients:
            for start in range(0, 25, 5):
                await clients.service.Write(write_request(events(range(start, start + 5))))
                await lines_reach(healthy, start + 5)
            assert (await sink_state(clients, "behind")).dropped == 15
            assert (await sink_state(clients, "keeps-up")).dropped == 0
            behind.unlink()
            await eventually(lambda: len(jsonl_ids(behind)) == 10, what="the newest ten")
            stats = await clients.operator.GetStats(STATS)
    assert jsonl_ids(behind) == [f"ev-{n:06d}" for n in range(15, 25)]
    assert len(jsonl_ids(healthy)) == 25
    assert stats.total_inserts == 25
    dropped = REGISTRY.get_sample_value(
        "edgebot_outbox_dropped_total", {"sink": "behind", "reason": "full"}
    )
    assert dropped == 15


async def test_without_secondary_sinks_there_is_no_outbox(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    disabled = file_sink(tmp_path / "archive", enabled=False)
    async with start_storage(pki, db_path, **with_sinks(tmp_path, disabled)) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(events(range(3))))
            stats = await clients.operator.GetStats(STATS)
    assert [s.name for s in stats.sinks] == ["sqlite"]
    assert not (tmp_path / "outbox.db").exists()
    assert not (tmp_path / "archive").exists()


async def test_a_removed_sink_no_longer_holds_outbox_entries(
    pki: Pki, db_path: Path, tmp_path: Path
) -> None:
    stays, removed = tmp_path / "stays", tmp_path / "removed"
    removed.write_text("down")
    both = with_sinks(tmp_path, file_sink(stays, "stays"), file_sink(removed, "removed"))
    async with start_storage(pki, db_path, **both) as app:
        async with StorageClients.connect(pki, app) as clients:
            await clients.service.Write(write_request(events(range(4))))
            await eventually(lambda: len(jsonl_ids(stays)) == 4, what="delivery")
            # The cursor moves after the file is written: a stop in between would leave
            # the entries for "stays" to deliver again, which is not what this test is about.
            await sink_state_when(clients, "stays", lambda state: state.outbox_depth == 0)
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (4,)
    async with start_storage(pki, db_path, **with_sinks(tmp_path, file_sink(stays, "stays"))):
        pass
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (0,)
        assert db.execute("SELECT sink FROM cursors").fetchall() == [("stays",)]
