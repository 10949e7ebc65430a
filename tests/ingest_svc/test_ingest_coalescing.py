"""Batches waiting for the pipeline share one Process call, and each still gets its own
answer: its passed events, and its refusals at its own positions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from inprocess_mesh import (
    Mothership,
    ack_for,
    acks_of_four_batches,
    make_batch,
    make_event,
    stored_ids,
)
from inprocess_mesh import mothership as inprocess_mothership
from support import Pki, make_config, secure_channel

from gen.edgebot.v1 import encoded_pb2, event_pb2, ingest_pb2
from ingest_svc.coalescing import ProcessCoalescer, Processed
from ingest_svc.forwarder import PipelineCalls
from mesh.app import running
from mesh.timeutil import ns_to_ts
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline

YEAR_1990_NS = 631_152_000 * 1_000_000_000


def too_old(message: str) -> event_pb2.Event:
    """An event the default pipeline refuses (quality_validation: time before 2000)."""
    event = make_event(message)
    ns_to_ts(YEAR_1990_NS, event.time)
    return event


class GatedPipeline:
    """A real pipeline service behind a gate: calls wait until the test opens it."""

    def __init__(self, stub: PipelineCalls) -> None:
        self.stub = stub
        self.gate = asyncio.Event()
        self.called = asyncio.Event()
        self.requests: list[int] = []

    async def __call__(
        self, request: encoded_pb2.EncodedProcessRequest
    ) -> encoded_pb2.EncodedProcessResponse:
        self.requests.append(len(request.batch.events))
        self.called.set()
        await self.gate.wait()
        return await self.stub.Process(request, timeout=5)


@pytest.fixture
async def pipeline(pki: Pki) -> AsyncIterator[GatedPipeline]:
    config = make_config(PipelineServiceConfig, pki, "pipeline", pipeline={"max_batch_events": 6})
    async with running(build_pipeline(config)) as app:
        async with secure_channel(app.runtime.ports.grpc, pki.service("ingest")) as channel:
            yield GatedPipeline(PipelineCalls(channel))


def header() -> encoded_pb2.EncodedEventBatch:
    return encoded_pb2.EncodedEventBatch(batch_id="b", agent_id="site-a", seq=1)


def encoded(events: list[event_pb2.Event]) -> list[bytes]:
    return [event.SerializeToString() for event in events]


def messages(answer: Processed) -> list[str]:
    """The messages of the passed events, which come back encoded."""
    return [event_pb2.Event.FromString(data).message for data in answer.events]


async def one_in_flight_then_the_rest(
    pipeline: GatedPipeline, coalescer: ProcessCoalescer, batches: list[list[event_pb2.Event]]
) -> list[asyncio.Task[Processed]]:
    """The first batch's call is in flight (held at the gate) before the others arrive."""
    first = asyncio.create_task(coalescer.process(header(), encoded(batches[0])))
    await pipeline.called.wait()
    rest = [asyncio.create_task(coalescer.process(header(), encoded(b))) for b in batches[1:]]
    await asyncio.sleep(0.05)
    return [first, *rest]


async def test_batches_waiting_for_a_busy_pipeline_go_in_one_call(
    pipeline: GatedPipeline,
) -> None:
    coalescer = ProcessCoalescer(pipeline, max_events=6, max_calls=1)
    first = [make_event("first")]
    second = [make_event("a"), too_old("old"), make_event("b")]
    third = [too_old("old too"), make_event("c")]
    answers = await one_in_flight_then_the_rest(pipeline, coalescer, [first, second, third])
    assert pipeline.requests == [1]  # the others wait while the only call is in flight
    pipeline.gate.set()
    one, two, three = await asyncio.gather(*answers)
    assert pipeline.requests == [1, 5]
    assert messages(one) == ["first"]
    assert messages(two) == ["a", "b"]
    assert [(r.error.index, r.error.field) for r in two.rejected] == [(1, "time")]
    assert messages(three) == ["c"]
    assert [(r.error.index, r.event.message) for r in three.rejected] == [(0, "old too")]


async def test_batches_submitted_in_one_turn_share_a_call_while_slots_are_free(
    pipeline: GatedPipeline,
) -> None:
    coalescer = ProcessCoalescer(pipeline, max_events=6, max_calls=4)
    batches = [[make_event(f"{n}.{i}") for i in range(2)] for n in range(3)]
    answers = [asyncio.create_task(coalescer.process(header(), encoded(b))) for b in batches]
    pipeline.gate.set()
    done = await asyncio.gather(*answers)
    assert pipeline.requests == [6]
    assert [messages(a) for a in done] == [[e.message for e in b] for b in batches]


async def test_a_call_never_carries_more_than_max_events(pipeline: GatedPipeline) -> None:
    coalescer = ProcessCoalescer(pipeline, max_events=4, max_calls=1)
    sizes = [1, 3, 2, 2, 1]
    batches = [[make_event(f"{n}.{i}") for i in range(size)] for n, size in enumerate(sizes)]
    answers = await one_in_flight_then_the_rest(pipeline, coalescer, batches)
    pipeline.gate.set()
    done: list[Processed] = await asyncio.gather(*answers)
    assert pipeline.requests == [1, 3, 4, 1]  # 3 + 2 would pass 4; 2 + 2 fits, then 1
    assert [len(answer.events) for answer in done] == sizes


async def test_a_merged_call_refused_as_a_whole_is_retried_batch_by_batch(
    pipeline: GatedPipeline,
) -> None:
    # Misconfigured on purpose: merged calls of 8 exceed the pipeline's limit of 6.
    coalescer = ProcessCoalescer(pipeline, max_events=8, max_calls=1)
    batches = [[make_event(f"{n}.{i}") for i in range(4)] for n in range(3)]
    answers = await one_in_flight_then_the_rest(pipeline, coalescer, batches)
    pipeline.gate.set()
    done = await asyncio.gather(*answers)
    assert pipeline.requests == [4, 8, 4, 4]
    assert [messages(a) for a in done] == [[e.message for e in b] for b in batches]


async def test_a_single_batch_the_pipeline_refuses_gets_the_refusal(
    pipeline: GatedPipeline,
) -> None:
    coalescer = ProcessCoalescer(pipeline, max_events=100, max_calls=1)
    pipeline.gate.set()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coalescer.process(header(), encoded([make_event(str(i)) for i in range(7)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def mothership(pki: Pki, tmp_path: Path) -> AsyncIterator[Mothership]:
    async with inprocess_mothership(pki, tmp_path, ingest={"max_pipeline_calls": 1}) as mesh:
        yield mesh


async def test_errors_name_positions_in_the_batch_the_agent_sent(
    mothership: Mothership, pki: Pki
) -> None:
    no_id = make_event("no id")
    no_id.id = ""
    fine = [make_event("fine"), make_event("also fine")]
    batch = make_batch("site-a", [no_id, fine[0], too_old("1990"), fine[1]])
    ack = await ack_for(mothership, pki, "site-a", batch)
    assert ack.status == ingest_pb2.ACK_STATUS_PARTIAL
    # Index 2 is the batch's own position, not the third event the pipeline was sent.
    assert [(e.index, e.field) for e in ack.errors] == [(0, "id"), (2, "time")]
    assert sorted(await stored_ids(mothership.storage, pki)) == sorted(e.id for e in fine)


async def test_many_streams_through_one_pipeline_call_slot_store_everything_once(
    mothership: Mothership, pki: Pki
) -> None:
    streams = [("site-a", 1), ("site-a", 2), ("site-b", 1), ("site-b", 2)]
    acks = await asyncio.gather(*(acks_of_four_batches(mothership, pki, *s) for s in streams))
    every_ack = [ack for stream_acks in acks for ack in stream_acks]
    assert all(a.status == ingest_pb2.ACK_STATUS_OK and a.accepted == 5 for a in every_ack)
    stored = await stored_ids(mothership.storage, pki)
    assert len(stored) == len(set(stored)) == 4 * 4 * 5
