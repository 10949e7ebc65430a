"""The shipper against an IngestService test double over real gRPC with mTLS."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edge_helpers import (
    IngestDouble,
    IngestServer,
    ack,
    agent_config,
    eventually,
    limits,
    make_event,
    ok,
)
from prometheus_client import REGISTRY
from support import Pki

from edge_agent.config import AgentConfig
from edge_agent.shipper import BatchSizer, Shipper, backoff_delay
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2, ingest_pb2

# Tests that count batches keep their size fixed.
FIXED_SIZE = {"batch_max_events": 10, "adaptive_batching": False}


class Agent:
    """A spool and a shipper, as the agent runs them."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.spool = Spool(config.spool.path, config.spool.max_bytes)
        self.shipper = Shipper(config, self.spool)

    async def __aenter__(self) -> Agent:
        await self.spool.open()
        self.shipper.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.shipper.stop(0)
        await self.spool.close()

    async def add(self, count: int, message: str = "event") -> list[event_pb2.Event]:
        events = [make_event(f"{message} {i}") for i in range(count)]
        assert (await self.spool.append(events)).accepted == count
        return events


@pytest.fixture
async def servers() -> AsyncIterator[list[IngestServer]]:
    started: list[IngestServer] = []
    yield started
    for server in started:
        await server.stop()


async def serve(
    pki: Pki, servers: list[IngestServer], double: IngestDouble, port: int = 0
) -> IngestServer:
    server = await IngestServer(pki, double, port).start()
    servers.append(server)
    return server


async def test_ok_acks_empty_the_spool(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    double = IngestDouble(limits(window=4, max_events=300), ok)
    server = await serve(pki, servers, double)
    config = agent_config(pki, tmp_path, [server.address], shipper={"batch_max_events": 500})
    async with Agent(config) as agent:
        events = await agent.add(1200)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty")
    assert set(double.store.counts) == {e.id for e in events}
    assert max(double.store.counts.values()) == 1
    assert max(len(b.events) for b in double.batches) == 300
    assert {b.agent_id for b in double.batches} == {"site-a"}
    assert not any(b.is_retry for b in double.batches)
    seqs = [b.seq for b in double.batches]
    assert sorted(seqs) == list(range(seqs[0], seqs[0] + len(seqs)))
    assert double.hellos[0].agent_id == "site-a"
    assert double.hellos[0].agent_version
    assert double.peer_names == [b"site-a"]
    assert (REGISTRY.get_sample_value("edgebot_last_ship_timestamp_seconds") or 0) > 0


async def test_retry_ack_resends_same_batch_once_stored(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    seen: set[str] = set()

    async def retry_first(batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
        if batch.batch_id in seen:
            return await ok(batch)
        seen.add(batch.batch_id)
        reply = ack(batch, ingest_pb2.ACK_STATUS_RETRY, message="pipeline busy")
        reply.retry_delay.FromMilliseconds(30)
        return reply

    double = IngestDouble(limits(window=2), retry_first)
    server = await serve(pki, servers, double)
    config = agent_config(pki, tmp_path, [server.address], shipper=FIXED_SIZE)
    async with Agent(config) as agent:
        events = await agent.add(25)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty")
    firsts = [b for b in double.batches if not b.is_retry]
    resends = [b for b in double.batches if b.is_retry]
    assert len(firsts) == len(resends) == 3
    assert sorted((b.batch_id, b.seq) for b in firsts) == sorted(
        (b.batch_id, b.seq) for b in resends
    )
    for first in firsts:
        (again,) = [b for b in resends if b.batch_id == first.batch_id]
        assert list(again.events) == list(first.events)
    assert double.store.counts == {e.id: 1 for e in events}


async def test_server_restart_mid_stream_resends_unacked_batches(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    answered = 0
    held: list[str] = []

    async def ack_two_then_hold(batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck | None:
        nonlocal answered
        if answered < 2:
            answered += 1
            return await ok(batch)
        held.append(batch.batch_id)
        return None

    first = IngestDouble(limits(window=4), ack_two_then_hold)
    server = await serve(pki, servers, first)
    config = agent_config(pki, tmp_path, [server.address], shipper=FIXED_SIZE)
    async with Agent(config) as agent:
        events = await agent.add(100)
        await eventually(lambda: len(held) == 4, what="a full window of un-acked batches")
        await server.stop()

        second = IngestDouble(limits(window=4), ok, store=first.store)
        await serve(pki, servers, second, port=server.port)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty after restart")

    resent = second.batches[:4]
    assert all(b.is_retry for b in resent)
    assert [b.batch_id for b in resent] == held
    first_seqs = {b.batch_id: b.seq for b in first.batches}
    assert all(first_seqs[b.batch_id] == b.seq for b in resent)
    assert not any(b.is_retry for b in second.batches[4:])
    assert set(first.store.counts) == {e.id for e in events}
    assert max(first.store.counts.values()) == 1
    assert first.store.ledger == {b.batch_id for b in first.batches + second.batches}
    assert len(first.store.ledger) == 10


async def test_partial_ack_moves_refused_events_to_dead_letters(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    async def refuse_odd(batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
        errors = [
            event_pb2.EventError(index=i, event_id=e.id, field="message", reason=f"bad {i}")
            for i, e in enumerate(batch.events)
            if i % 2
        ]
        return ack(
            batch,
            ingest_pb2.ACK_STATUS_PARTIAL,
            accepted=len(batch.events) - len(errors),
            rejected=len(errors),
            errors=errors,
        )

    double = IngestDouble(limits(), refuse_odd)
    server = await serve(pki, servers, double)
    config = agent_config(pki, tmp_path, [server.address], shipper={"batch_max_events": 4})
    async with Agent(config) as agent:
        events = await agent.add(8)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty")
        letters = await agent.spool.dead_letters()
    refused = [e for i, e in enumerate(events) if i % 2]
    assert [(d.event, d.status, d.field) for d in letters] == [
        (e, "partial", "message") for e in refused
    ]
    assert [d.reason for d in letters] == ["bad 1", "bad 3"] * 2
    assert set(double.store.counts) == {e.id for i, e in enumerate(events) if not i % 2}


async def test_rejected_batch_goes_to_dead_letters_whole(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    async def reject(batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
        return ack(batch, ingest_pb2.ACK_STATUS_REJECTED, message="batch.agent_id: mismatch")

    double = IngestDouble(limits(), reject)
    server = await serve(pki, servers, double)
    async with Agent(agent_config(pki, tmp_path, [server.address])) as agent:
        events = await agent.add(3)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty")
        letters = await agent.spool.dead_letters()
    assert [(d.event, d.status, d.reason) for d in letters] == [
        (e, "rejected", "batch.agent_id: mismatch") for e in events
    ]
    assert not double.store.counts


async def test_in_flight_window_is_never_exceeded(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    rng = random.Random(7)

    async def slow_out_of_order(batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
        await asyncio.sleep(rng.uniform(0, 0.02))
        return await ok(batch)

    double = IngestDouble(limits(window=3, max_events=5), slow_out_of_order)
    server = await serve(pki, servers, double)
    async with Agent(agent_config(pki, tmp_path, [server.address])) as agent:
        events = await agent.add(300)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty")
    assert len(double.batches) == 60
    assert double.max_outstanding == 3
    assert set(double.store.counts) == {e.id for e in events}


async def test_fails_over_to_the_next_address(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    double = IngestDouble(limits(), ok)
    server = await serve(pki, servers, double)
    before = REGISTRY.get_sample_value("edgebot_shipper_reconnects_total", {"cause": "unavailable"})
    async with Agent(agent_config(pki, tmp_path, [dead, server.address])) as agent:
        events = await agent.add(5)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty")
    assert set(double.store.counts) == {e.id for e in events}
    after = REGISTRY.get_sample_value("edgebot_shipper_reconnects_total", {"cause": "unavailable"})
    assert (after or 0) - (before or 0) >= 1


async def test_stop_drains_within_grace_and_keeps_the_rest(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    double = IngestDouble(limits(), ok)
    server = await serve(pki, servers, double)
    config = agent_config(pki, tmp_path, [server.address], shipper={"batch_max_wait_s": 30})
    agent = Agent(config)
    await agent.__aenter__()
    events = await agent.add(7)
    await agent.shipper.stop(5)
    assert agent.spool.events == 0
    assert set(double.store.counts) == {e.id for e in events}
    await agent.spool.close()

    await server.stop()
    again = Agent(config)
    await again.__aenter__()
    await again.add(2)
    await again.shipper.stop(0.2)
    assert again.spool.events == 2
    await again.spool.close()


def test_backoff_doubles_with_jitter_up_to_the_max() -> None:
    assert [backoff_delay(n, 0.5, 30, rand=lambda: 1.0) for n in range(8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    assert backoff_delay(3, 0.5, 30, rand=lambda: 0.0) == 2.0
    assert backoff_delay(10_000, 0.5, 30, rand=lambda: 0.0) == 15.0


class CountingProxy:
    """A TCP proxy that counts the bytes the agent sends (TLS passes through untouched)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self._pipe(reader, up_writer, count=True),
            self._pipe(up_reader, writer, count=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    self.sent += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def shipped_bytes(pki: Pki, tmp_path: Path, servers: list[IngestServer], gzip: bool) -> int:
    double = IngestDouble(limits(window=4, max_events=300), ok)
    server = await serve(pki, servers, double)
    proxy = await CountingProxy(int(server.address.rsplit(":", 1)[1])).start()
    config = agent_config(
        pki, tmp_path / str(gzip), [f"127.0.0.1:{proxy.port}"], shipper={"gzip": gzip}
    )
    async with Agent(config) as agent:
        events = await agent.add(200, message="disk quota nearly exhausted " * 80)
        await eventually(lambda: agent.spool.events == 0, what="spool to empty")
    await proxy.close()
    assert set(double.store.counts) == {e.id for e in events}
    return proxy.sent


async def test_gzip_compresses_the_stream_when_asked(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    plain = await shipped_bytes(pki, tmp_path, servers, gzip=False)
    compressed = await shipped_bytes(pki, tmp_path, servers, gzip=True)
    assert compressed < plain / 5


class CountingDeadEndpoint:
    """A TCP port that accepts and at once closes every connection, counting them."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._refuse, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _refuse(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_breaker_keeps_a_dead_address_out_of_the_rotation(
    pki: Pki, tmp_path: Path, servers: list[IngestServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Each time the live ingest drops the stream, fail-over would try the dead address
    first; once its breaker is open (2 failures), it is skipped and no attempt reaches it."""
    dead = CountingDeadEndpoint()
    dead_address = await dead.start()
    double = IngestDouble(limits(), ok)
    live = await serve(pki, servers, double)
    config = agent_config(
        pki,
        tmp_path,
        [dead_address, live.address],
        shipper={"breaker_failures": 2, "breaker_open_s": 60, "backoff_initial_s": 0.3},
    )
    delivered: list[event_pb2.Event] = []

    def sessions_to_dead() -> int:
        """Failed streams to the dead address (gRPC may open more than one socket each)."""
        return sum(
            f"ingest stream to {dead_address} lost" in r.getMessage() for r in caplog.records
        )

    async with Agent(config) as agent:
        for round_number in range(5):
            delivered += await agent.add(3, f"round {round_number}")
            await eventually(lambda: agent.spool.events == 0, what="spool to empty")
            attempts, streams = sessions_to_dead(), len(double.hellos)
            double.hang_up()
            await eventually(
                lambda streams=streams: len(double.hellos) > streams,  # type: ignore[misc]
                within=20,
                what="a new stream to the live ingest",
            )
            if round_number >= 2:
                assert sessions_to_dead() == attempts, "an open breaker let a call through"
        open_gauge = REGISTRY.get_sample_value(
            "edgebot_shipper_breaker_open", {"address": dead_address}
        )
    await dead.stop()
    assert sessions_to_dead() == 2
    assert dead.connections >= 2
    assert open_gauge == 1
    assert set(double.store.counts) == {e.id for e in delivered}


async def test_a_lone_address_with_an_open_breaker_is_still_retried_at_backoff_pace(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    double = IngestDouble(limits(), ok)
    config = agent_config(
        pki,
        tmp_path,
        [f"127.0.0.1:{port}"],
        shipper={"breaker_failures": 1, "breaker_open_s": 600},
    )
    async with Agent(config) as agent:
        events = await agent.add(4)
        await asyncio.sleep(0.5)
        await serve(pki, servers, double, port)
        await eventually(lambda: agent.spool.events == 0, within=5, what="spool to empty")
    assert set(double.store.counts) == {e.id for e in events}


def test_batch_sizer_grows_under_backlog_and_shrinks_when_quiet() -> None:
    sizer = BatchSizer(floor=100, ceiling=1000, adaptive=True)
    for expected in (200, 400, 800, 1000, 1000):
        sizer.formed(size=sizer.target, backlog_after=5000, on_time=False)
        assert sizer.target == expected
    sizer.formed(size=1000, backlog_after=10, on_time=False)
    assert sizer.target == 1000, "a full batch with no backlog behind it keeps the size"
    sizer.formed(size=600, backlog_after=0, on_time=True)
    assert sizer.target == 1000, "a batch over half full keeps the size"
    for expected in (500, 250, 125, 100, 100):
        sizer.formed(size=3, backlog_after=0, on_time=True)
        assert sizer.target == expected
    fixed = BatchSizer(floor=100, ceiling=1000, adaptive=False)
    fixed.formed(size=100, backlog_after=5000, on_time=False)
    assert fixed.target == 100


async def test_adaptive_batches_grow_with_a_backlog_then_shrink_when_quiet(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    double = IngestDouble(limits(window=2, max_events=1600), ok)
    server = await serve(pki, servers, double)
    config = agent_config(
        pki,
        tmp_path,
        [server.address],
        shipper={"batch_max_events": 100, "adaptive_max_events": 5000, "batch_max_wait_s": 0.05},
    )
    async with Agent(config) as agent:
        backlog = await agent.add(12_000, "backlog")
        await eventually(lambda: agent.spool.events == 0, what="backlog drained")
        sizes = [len(b.events) for b in double.batches]
        assert sizes[:5] == [100, 200, 400, 800, 1600]
        assert max(sizes) == 1600, "capped by the server's max_events_per_batch"
        quiet: list[event_pb2.Event] = []
        for _ in range(12):
            quiet += await agent.add(2, "quiet")
            await eventually(lambda: agent.spool.events == 0, what="quiet events shipped")
        assert REGISTRY.get_sample_value("edgebot_shipper_batch_target_events") == 100
    assert set(double.store.counts) == {e.id for e in backlog + quiet}
    assert max(double.store.counts.values()) == 1


async def test_send_when_idle_ships_at_once_and_gathers_while_a_batch_is_in_flight(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    release_first = asyncio.Event()

    async def hold_the_first(batch: event_pb2.EventBatch) -> ingest_pb2.BatchAck:
        if len(double.batches) == 1:
            await release_first.wait()
        return await ok(batch)

    double = IngestDouble(limits(window=4), hold_the_first)
    server = await serve(pki, servers, double)
    shipper = {"batch_max_wait_s": 30, "send_when_idle": True}
    config = agent_config(pki, tmp_path, [server.address], shipper=shipper)
    async with Agent(config) as agent:
        first = await agent.add(1, "first")
        await eventually(lambda: len(double.batches) == 1, within=5, what="the lone event sent")
        later = await agent.add(3, "second")
        await asyncio.sleep(0.3)
        assert len(double.batches) == 1, "events gather while a batch awaits its ack"
        release_first.set()
        await eventually(lambda: agent.spool.events == 0, within=5, what="the rest sent")
    assert [[e.id for e in b.events] for b in double.batches] == [
        [e.id for e in first],
        [e.id for e in later],
    ]


async def test_without_send_when_idle_a_partial_batch_waits_out_its_max_wait(
    pki: Pki, tmp_path: Path, servers: list[IngestServer]
) -> None:
    double = IngestDouble(limits(window=4), ok)
    server = await serve(pki, servers, double)
    config = agent_config(pki, tmp_path, [server.address], shipper={"batch_max_wait_s": 0.6})
    async with Agent(config) as agent:
        await agent.add(1)
        await asyncio.sleep(0.3)
        assert not double.batches
        await eventually(lambda: agent.spool.events == 0, within=5, what="the batch sent")
