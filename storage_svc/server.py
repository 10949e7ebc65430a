"""StorageService servicer: protobuf in and out; the work is in the sink and the tail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc

from gen.edgebot.v1 import event_pb2, storage_pb2, storage_pb2_grpc
from mesh import AccessPolicy, Kind, ServiceRuntime, kinds
from mesh.errors import abort_invalid, abort_with_retry
from mesh.lockstep import StreamDrain, request_span
from mesh.timeutil import NS_PER_S, ns_to_ts, ts_to_ns
from mesh.types import Context
from storage_svc import metrics
from storage_svc.config import StorageServiceConfig
from storage_svc.entities import (
    KINDS,
    Entity,
    EntityAnswer,
    EntityGraph,
    Relation,
    parse_entity_query,
)
from storage_svc.fanout import FanOut, HealthListener, SinkWorker
from storage_svc.outbox import Outbox, OutboxError
from storage_svc.query import (
    BucketCount,
    InvalidArgument,
    PagePosition,
    PageRequest,
    SortOrder,
    decode_page_token,
    encode_page_token,
    fitting,
    page_size,
    parse_filter,
    parse_group_by,
    parse_order,
)
from storage_svc.sinks.base import (
    BatchWrite,
    Health,
    PrimarySink,
    QueryPage,
    SecondarySink,
    SinkError,
    SinkOpenError,
    SinkState,
    StoredEvent,
    StoreTotals,
    WriteOutcome,
)
from storage_svc.sinks.entities import EntitySink
from storage_svc.sinks.factory import secondary_sink
from storage_svc.sinks.postgres import PostgresSink
from storage_svc.sinks.sqlite import SqliteSink
from storage_svc.sinks_config import EntitiesSinkSection, SecondarySinkSection
from storage_svc.tail import (
    SubscriberOverflow,
    TailClosed,
    TailHub,
    decode_cursor,
    encode_cursor,
    follow,
)

log = logging.getLogger(__name__)

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
WRITE_STREAM = f"{SERVICE_NAME}/WriteStream"
_CALLERS = kinds(Kind.SERVICE, Kind.OPERATOR)
POLICY = AccessPolicy(
    methods={
        method: _CALLERS
        for method in (
            "Write",
            "WriteMany",
            "WriteStream",
            "QueryEvents",
            "AggregateEvents",
            "TailEvents",
            "GetStats",
            "QueryEntities",
        )
    }
)
DEFAULT_BUCKET_NS = 3600 * NS_PER_S
RETRY_AFTER_S = 1.0
BATCH_ID_REQUIRED = "required: it is the ledger key for re-sent batches"
ENTITY_KINDS = {kind: value for value, kind in KINDS.items()}
RELATIONS = {
    Relation.GENERATED: storage_pb2.ENTITY_RELATION_GENERATED,
    Relation.EXECUTED: storage_pb2.ENTITY_RELATION_EXECUTED,
}
SINK_HEALTH = {
    Health.UP: storage_pb2.SINK_HEALTH_UP,
    Health.DEGRADED: storage_pb2.SINK_HEALTH_DEGRADED,
    Health.DOWN: storage_pb2.SINK_HEALTH_DOWN,
}


@contextlib.asynccontextmanager
async def _translated_errors(context: Context, sink_reason: str) -> AsyncIterator[None]:
    """Bad input becomes INVALID_ARGUMENT naming the field; a failing sink UNAVAILABLE."""
    try:
        yield
    except InvalidArgument as exc:
        await abort_invalid(context, exc.field, exc.reason)
    except SinkError as exc:
        await abort_with_retry(
            context, grpc.StatusCode.UNAVAILABLE, str(exc), RETRY_AFTER_S, sink_reason
        )


def sink_health_name(sink: str) -> str:
    """The grpc.health.v1 entry of a secondary sink: SERVING unless the sink is DOWN."""
    return f"{SERVICE_NAME}/sink/{sink}"


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(
        self,
        sink: PrimarySink,
        fanout: FanOut,
        hub: TailHub,
        config: StorageServiceConfig,
        graph: EntityGraph | None = None,
    ) -> None:
        self.sink = sink
        self.fanout = fanout
        self.hub = hub
        self.config = config
        self.graph = graph
        self.streams = StreamDrain()

    async def Write(
        self, request: storage_pb2.WriteRequest, context: Context
    ) -> storage_pb2.WriteResponse:
        if not request.batch.batch_id:
            await abort_invalid(context, "batch.batch_id", BATCH_ID_REQUIRED)
        try:
            return await self._written(request)
        except SinkError as exc:
            await abort_with_retry(
                context,
                grpc.StatusCode.UNAVAILABLE,
                str(exc),
                RETRY_AFTER_S,
                "STORAGE_WRITE_FAILED",
            )

    async def WriteMany(
        self, request: storage_pb2.WriteManyRequest, context: Context
    ) -> storage_pb2.WriteManyResponse:
        return storage_pb2.WriteManyResponse(results=await self._write_results(request.writes))

    async def WriteStream(
        self, requests: AsyncIterator[storage_pb2.WriteStreamRequest], context: Context
    ) -> AsyncIterator[storage_pb2.WriteStreamResponse]:
        async for request in self.streams.requests(requests):
            with request_span(WRITE_STREAM, request.trace_context):
                results = await self._write_results(request.writes)
            yield storage_pb2.WriteStreamResponse(results=results)

    async def _write_results(
        self, writes: Sequence[storage_pb2.WriteRequest]
    ) -> list[storage_pb2.WriteResult]:
        # Together: the primary sink commits the writes that arrive at once in one group.
        return await asyncio.gather(*(self._write_result(n, w) for n, w in enumerate(writes)))

    async def _write_result(
        self, position: int, request: storage_pb2.WriteRequest
    ) -> storage_pb2.WriteResult:
        if not request.batch.batch_id:
            return _failure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"writes[{position}].batch.batch_id: {BATCH_ID_REQUIRED}",
            )
        try:
            return storage_pb2.WriteResult(written=await self._written(request))
        except SinkError as exc:
            return _failure(grpc.StatusCode.UNAVAILABLE, str(exc), RETRY_AFTER_S)

    async def _written(self, request: storage_pb2.WriteRequest) -> storage_pb2.WriteResponse:
        try:
            outcome = await self.fanout.write(_batch_write(request))
        except SinkError:
            metrics.DATABASE_WRITES.labels(self.sink.name, "failed").inc()
            raise
        _count_write(self.sink.name, outcome)
        return _write_response(self.sink.name, outcome)

    async def QueryEvents(
        self, request: storage_pb2.QueryEventsRequest, context: Context
    ) -> storage_pb2.QueryEventsResponse:
        limits = self.config.query
        async with _translated_errors(context, "STORAGE_READ_FAILED"):
            selection = parse_filter(request.filter)
            order = parse_order(request.order)
            size = page_size(request.page_size, limits.default_page_size, limits.max_page_size)
            after = decode_page_token(request.page_token, order)
            page = await self.sink.query(selection, PageRequest(order, size, after))
        page = _within_bytes(page, limits.max_page_bytes)
        response = storage_pb2.QueryEventsResponse(events=page.events)
        if page.next_position is not None:
            response.next_page_token = encode_page_token(order, page.next_position)
        return response

    async def AggregateEvents(
        self, request: storage_pb2.AggregateEventsRequest, context: Context
    ) -> storage_pb2.AggregateEventsResponse:
        async with _translated_errors(context, "STORAGE_READ_FAILED"):
            selection = parse_filter(request.filter)
            group_by = parse_group_by(request.group_by)
            bucket_ns = _bucket_ns(request)
            counts = await self.sink.aggregate(selection, bucket_ns, group_by)
        return storage_pb2.AggregateEventsResponse(counts=[_event_count(c) for c in counts])

    async def TailEvents(
        self, request: storage_pb2.TailEventsRequest, context: Context
    ) -> AsyncIterator[storage_pb2.TailEventsResponse]:
        tail = self.config.tail
        async with _translated_errors(context, "STORAGE_READ_FAILED"):
            selection = parse_filter(request.filter)
            after = decode_cursor(request.start_cursor)
            stream = follow(
                self.sink,
                self.hub,
                selection,
                after,
                tail.subscriber_buffer,
                tail.max_events_per_response,
            )
            try:
                async with contextlib.aclosing(stream):
                    async for stored in stream:
                        for response in _tail_responses(stored, tail.max_response_bytes):
                            yield response
            except SubscriberOverflow as exc:
                await abort_with_retry(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    str(exc),
                    RETRY_AFTER_S,
                    "TAIL_SUBSCRIBER_OVERFLOW",
                )
            except TailClosed as exc:
                await abort_with_retry(
                    context, grpc.StatusCode.UNAVAILABLE, str(exc), RETRY_AFTER_S, "DRAINING"
                )

    async def GetStats(
        self, request: storage_pb2.StorageServiceGetStatsRequest, context: Context
    ) -> storage_pb2.StorageServiceGetStatsResponse:
        async with _translated_errors(context, "STORAGE_READ_FAILED"):
            totals = await self.sink.totals()
        try:
            states = await self.fanout.states()
        except OutboxError as exc:
            await abort_with_retry(
                context, grpc.StatusCode.UNAVAILABLE, str(exc), RETRY_AFTER_S, "OUTBOX_READ_FAILED"
            )
        return _stats_response(totals, states)

    async def QueryEntities(
        self, request: storage_pb2.QueryEntitiesRequest, context: Context
    ) -> storage_pb2.QueryEntitiesResponse:
        graph = self.graph
        if graph is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "QueryEntities needs an entities sink: add {type: entities} to sinks",
            )
        async with _translated_errors(context, "STORAGE_READ_FAILED"):
            query = parse_entity_query(request, graph.settings)
            answer = await graph.query(query)
        if answer is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no {query.ref.kind.value} entity {query.ref.key!r} was ever stored",
            )
        return _entities_response(answer)


def _entity(entity: Entity) -> storage_pb2.Entity:
    proto = storage_pb2.Entity(
        kind=ENTITY_KINDS[entity.kind], key=entity.key, relation=RELATIONS[entity.relation]
    )
    ns_to_ts(entity.first_ns, proto.first_seen_time)
    ns_to_ts(entity.last_ns, proto.last_seen_time)
    return proto


def _entities_response(answer: EntityAnswer) -> storage_pb2.QueryEntitiesResponse:
    response = storage_pb2.QueryEntitiesResponse(
        entity=_entity(answer.entity),
        events=answer.page.events,
        neighbors=[
            storage_pb2.EntityNeighbor(entity=_entity(n.entity), shared_events=n.shared_events)
            for n in answer.neighbors
        ],
        event_count=answer.event_count,
    )
    if answer.page.next_position is not None:
        response.next_page_token = encode_page_token(
            SortOrder.NEWEST_FIRST, answer.page.next_position
        )
    return response


def _failure(
    code: grpc.StatusCode, message: str, retry_after_s: float = 0.0
) -> storage_pb2.WriteResult:
    failure = storage_pb2.WriteFailure(code=code.value[0], message=message)
    if retry_after_s:
        failure.retry_delay.FromMilliseconds(int(retry_after_s * 1000))
    return storage_pb2.WriteResult(failure=failure)


def _batch_write(request: storage_pb2.WriteRequest) -> BatchWrite:
    batch = request.batch
    return BatchWrite(
        batch_id=batch.batch_id,
        agent_id=batch.agent_id,
        seq=batch.seq,
        events=batch.events,
        dead_letters=request.dead_letters,
        quarantined=request.quarantined,
    )


def _count_write(sink: str, outcome: WriteOutcome) -> None:
    metrics.DATABASE_WRITES.labels(sink, "duplicate" if outcome.duplicate_batch else "ok").inc()
    metrics.EVENTS_WRITTEN.labels(sink, "stored").inc(outcome.written)
    metrics.EVENTS_WRITTEN.labels(sink, "duplicate").inc(outcome.duplicates)


def _write_response(sink: str, outcome: WriteOutcome) -> storage_pb2.WriteResponse:
    status = (
        event_pb2.SINK_STATUS_DUPLICATE if outcome.duplicate_batch else event_pb2.SINK_STATUS_OK
    )
    result = event_pb2.SinkResult(
        sink=sink,
        primary=True,
        status=status,
        written=outcome.written,
        duplicates=outcome.duplicates,
    )
    result.duration.FromNanoseconds(int(outcome.seconds * NS_PER_S))
    return storage_pb2.WriteResponse(
        duplicate_batch=outcome.duplicate_batch,
        written=outcome.written,
        duplicates=outcome.duplicates,
        sink_results=[result],
    )


def _within_bytes(page: QueryPage, max_bytes: int) -> QueryPage:
    count = fitting(page.events, max_bytes)
    if count == len(page.events):
        return page
    last = page.events[count - 1]
    return QueryPage(page.events[:count], PagePosition(ts_to_ns(last.time), last.id))


def _bucket_ns(request: storage_pb2.AggregateEventsRequest) -> int:
    if not request.HasField("bucket"):
        return DEFAULT_BUCKET_NS
    width: int = request.bucket.ToNanoseconds()
    if width <= 0:
        raise InvalidArgument("bucket", "must be a positive duration")
    return width


def _event_count(count: BucketCount) -> storage_pb2.EventCount:
    return storage_pb2.EventCount(
        bucket_start_time=ns_to_ts(count.start_ns), key=count.key, count=count.count
    )


def _tail_responses(
    stored: Sequence[StoredEvent], max_bytes: int
) -> Iterator[storage_pb2.TailEventsResponse]:
    while stored:
        count = fitting([s.event for s in stored], max_bytes)
        chunk, stored = stored[:count], stored[count:]
        yield storage_pb2.TailEventsResponse(
            events=[s.event for s in chunk], cursor=encode_cursor(chunk[-1].seq)
        )


def _sink_state(state: SinkState) -> storage_pb2.SinkState:
    proto = storage_pb2.SinkState(
        name=state.name,
        kind=state.kind,
        primary=state.primary,
        health=SINK_HEALTH[state.health],
        written=state.written,
        failed=state.failed,
        last_error=state.last_error,
        outbox_depth=state.outbox_depth,
        rejected=state.rejected,
        dropped=state.dropped,
    )
    if not state.primary:
        proto.outbox_lag.FromNanoseconds(int(state.outbox_lag_s * NS_PER_S))
    return proto


def _stats_response(
    totals: StoreTotals, sinks: Sequence[SinkState]
) -> storage_pb2.StorageServiceGetStatsResponse:
    return storage_pb2.StorageServiceGetStatsResponse(
        total_inserts=totals.total_inserts,
        events_last_hour=totals.events_last_hour,
        duplicates=totals.duplicates,
        batches=totals.batches,
        dead_letters=totals.dead_letters,
        quarantined=totals.quarantined,
        sinks=[_sink_state(state) for state in sinks],
    )


def primary_sink(config: StorageServiceConfig, hub: TailHub) -> PrimarySink:
    if config.storage.primary == "sqlite":
        return SqliteSink(config.sqlite, on_commit=hub.publish)
    if config.storage.primary == "postgres":
        return PostgresSink(
            config.postgres, on_commit=hub.publish, listening=lambda: hub.subscriber_count > 0
        )
    raise SinkOpenError(f"storage.primary: unknown sink {config.storage.primary!r}")


def fan_out(
    config: StorageServiceConfig,
    primary: PrimarySink,
    sinks: Sequence[tuple[SecondarySinkSection, SecondarySink]],
    on_health: HealthListener,
) -> FanOut:
    """The primary alone, or with the outbox and one worker per enabled secondary sink."""
    if not sinks:
        return FanOut(primary, None, [], config.outbox)
    outbox = Outbox(config.outbox, [section.name for section, _ in sinks])
    poll_s = config.outbox.poll_interval_s
    workers = [SinkWorker(sink, section, outbox, poll_s) for section, sink in sinks]
    return FanOut(primary, outbox, workers, config.outbox, on_health)


def entity_graph(
    sinks: Sequence[tuple[SecondarySinkSection, SecondarySink]],
) -> EntityGraph | None:
    """The read side of the entities sink, if one is enabled."""
    for section, sink in sinks:
        if isinstance(sink, EntitySink) and isinstance(section, EntitiesSinkSection):
            return EntityGraph(sink.store, section)
    return None


class StorageApp:
    """Health: the overall entry and StorageService follow the primary only; each
    secondary sink has its own entry (``sink_health_name``) that is NOT_SERVING while that
    sink is DOWN. A secondary that is down degrades the service, it does not stop it."""

    def __init__(self, config: StorageServiceConfig) -> None:
        self.config = config
        self.hub = TailHub()
        self.sink = primary_sink(config, self.hub)
        sinks = [(section, secondary_sink(section, config)) for section in config.secondary_sinks]
        self.fanout = fan_out(config, self.sink, sinks, self._sink_health)
        self.graph = entity_graph(sinks)
        self.servicer = StorageServicer(self.sink, self.fanout, self.hub, config, self.graph)
        self.runtime = ServiceRuntime(
            name="storage",
            config=config,
            policy=POLICY,
            service_names=[SERVICE_NAME],
            register=lambda server: storage_pb2_grpc.add_StorageServiceServicer_to_server(
                self.servicer, server
            ),
        )
        self.runtime.before_drain.append(self._end_tails)

    async def _end_tails(self) -> None:
        self.hub.close()
        self.servicer.streams.drain()

    async def _sink_health(self, sink: str, health: Health) -> None:
        await self.runtime.set_serving(health is not Health.DOWN, sink_health_name(sink))

    async def open(self) -> None:
        try:
            await self.sink.open()
            await self.fanout.open()
        except (SinkOpenError, OutboxError) as exc:
            log.error("storage stays NOT_SERVING: %s", exc)
            raise
        await self.runtime.set_serving(True)

    async def close(self) -> None:
        await self.fanout.close()
        await self.sink.close()


def build(config: StorageServiceConfig) -> StorageApp:
    return StorageApp(config)


__all__ = ["StorageApp", "StorageServicer", "build", "sink_health_name"]
