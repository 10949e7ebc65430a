"""The shipper: streams spooled batches to IngestService and removes them only on a final ack.

A stream starts with Hello -> Limits; then up to ``limits.max_unacked_batches`` batches are
in flight. Every batch formed but not finally acknowledged stays in the spool with its
``batch_id`` and ``seq``; after a reconnect (or a restart) those batches are sent again,
first, with ``is_retry`` set.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from opentelemetry import trace

from edge_agent import metrics
from edge_agent.config import AgentConfig
from edge_agent.file_output import BatchFileWriter, FileOutputError
from edge_agent.spool import Spool, SpooledBatch
from gen.edgebot.v1 import encoded_pb2, ingest_pb2
from mesh import tracing
from mesh.backoff import backoff_delay
from mesh.breaker import BreakerState, CircuitBreaker
from mesh.channel import open_channel
from mesh.encoded import method_path, stream_call
from mesh.errors import retry_delay_s
from mesh.lockstep import write_message
from mesh.timeutil import NS_PER_S, now_ns

log = logging.getLogger(__name__)
tracer = trace.get_tracer("edgebot.agent")

AGENT_VERSION = "0.1.0"
# Used when the server advertises no byte limit; ingest's own default is 8 MiB.
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024
_STATUS_NAMES = {
    value: name.removeprefix("ACK_STATUS_").lower() for name, value in ingest_pb2.AckStatus.items()
}
# Batches go as EncodedStreamRequest (their events as spooled), the hello as StreamRequest.
StreamCall = grpc.aio.StreamStreamCall[Message, ingest_pb2.StreamResponse]
STREAM = method_path(ingest_pb2.DESCRIPTOR.services_by_name["IngestService"], "Stream")


class StreamEndedError(Exception):
    """The server closed the stream, or answered something the protocol does not allow."""


def batch_byte_limit(server_max_bytes: int, disk_reserve_bytes: int) -> int:
    """Largest batch to form: the server's limit, and at most half the spool's disk reserve,
    since acking a batch writes to the spool's WAL too and must always fit on the disk."""
    if disk_reserve_bytes <= 0:
        return server_max_bytes
    return min(server_max_bytes, disk_reserve_bytes // 2)


class BatchSizer:
    """How many events the next full batch holds.

    With adaptive batching the size doubles (up to ``ceiling``) while more than a full
    batch still waits behind a full one, and halves (down to ``floor``) when a batch leaves
    on time less than half full.
    """

    def __init__(self, floor: int, ceiling: int, adaptive: bool) -> None:
        self.floor = floor
        self.ceiling = max(floor, ceiling) if adaptive else floor
        self.target = floor
        metrics.BATCH_TARGET.set(self.target)

    def formed(self, size: int, backlog_after: int, on_time: bool) -> None:
        if not on_time and backlog_after >= self.target:
            self.target = min(self.ceiling, self.target * 2)
        elif on_time and size < self.target // 2:
            self.target = max(self.floor, self.target // 2)
        metrics.BATCH_TARGET.set(self.target)


async def next_batch(
    spool: Spool,
    sizer: BatchSizer,
    max_bytes: int,
    max_wait_s: float,
    draining: Callable[[], bool],
    idle: Callable[[], bool] = lambda: False,
) -> SpooledBatch:
    """Wait until a full batch is spooled, the oldest waiting event waited long enough, or
    (when ``idle`` says so) nothing awaits an ack, so a batch sent now waits behind none."""
    max_wait_ns = int(max_wait_s * NS_PER_S)
    while True:
        spool.appended.clear()
        target = sizer.target
        # Counting past one batch tells whether a backlog waits behind it.
        waiting = await spool.waiting(2 * target)
        timeout: float | None = None
        if waiting.oldest_appended_ns is not None:
            age_ns = now_ns() - waiting.oldest_appended_ns
            full = waiting.count >= target
            if full or age_ns >= max_wait_ns or draining() or idle():
                batch = await spool.form_batch(target, max_bytes)
                if batch is not None:
                    backlog = waiting.count - len(batch.events)
                    sizer.formed(len(batch.events), backlog, on_time=not full)
                    return batch
                continue
            timeout = (max_wait_ns - age_ns) / NS_PER_S
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await spool.appended.wait()


@dataclass
class ShipStats:
    """What acks said since the shipper started."""

    batches_acked: int = 0
    events_accepted: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0

    def count(self, ack: ingest_pb2.BatchAck) -> None:
        self.batches_acked += 1
        self.events_accepted += ack.accepted
        self.events_duplicate += ack.duplicates
        self.events_rejected += ack.rejected


class SpoolConsumer(abc.ABC):
    """What the agent drives to empty its spool: start, and stop after a drain grace."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.draining = False
        self.progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=type(self).__name__.lower())

    @abc.abstractmethod
    async def _run(self) -> None:
        """Ship until cancelled."""

    async def stop(self, grace_s: float) -> None:
        """Ship what is spooled for up to ``grace_s``, then stop; the rest stays spooled."""
        self.draining = True
        self.spool.appended.set()
        try:
            async with asyncio.timeout(grace_s):
                await self._drained()
        except TimeoutError:
            log.warning(
                "%s stopping with %d events still spooled (grace %.1fs)",
                type(self).__name__,
                self.spool.events,
                grace_s,
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _drained(self) -> None:
        while self.spool.events > 0:
            self.progress.clear()
            await self.progress.wait()


class FileShipper(SpoolConsumer):
    """Ships to files only: a batch leaves the spool once its write is fsynced."""

    def __init__(self, config: AgentConfig, spool: Spool, writer: BatchFileWriter) -> None:
        super().__init__(spool)
        self.settings = config.shipper
        self.writer = writer
        self.sizer = BatchSizer(
            self.settings.batch_max_events,
            self.settings.adaptive_max_events,
            self.settings.adaptive_batching,
        )

    async def _run(self) -> None:
        attempt = 0
        pending = await self.spool.pending_batches()
        while True:
            batch = pending.pop(0) if pending else await self._next()
            while not await self._write(batch):
                delay = backoff_delay(
                    attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s
                )
                attempt += 1
                await asyncio.sleep(delay)
            attempt = 0
            await self.spool.ack(batch.batch_id)
            metrics.LAST_SHIP.set(time.time())
            self.progress.set()

    async def _next(self) -> SpooledBatch:
        return await next_batch(
            self.spool,
            self.sizer,
            batch_byte_limit(DEFAULT_MAX_BATCH_BYTES, self.spool.min_free_disk_bytes),
            self.settings.batch_max_wait_s,
            lambda: self.draining,
        )

    async def _write(self, batch: SpooledBatch) -> bool:
        try:
            await asyncio.to_thread(self.writer.write, batch)
        except FileOutputError as error:
            log.error("batch %s not written, it stays spooled: %s", batch.batch_id, error)
            return False
        return True


class Shipper(SpoolConsumer):
    def __init__(
        self, config: AgentConfig, spool: Spool, archive: BatchFileWriter | None = None
    ) -> None:
        super().__init__(spool)
        self.agent_id = config.agent.id
        self.tls = config.tls
        self.settings = config.shipper
        self.hostname = socket.gethostname()
        self.archive = archive
        self.archived: set[str] = set()
        self.stats = ShipStats()
        self._address_index = 0
        self.breakers = {
            address: CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_open_s)
            for address in self.settings.ingest.addresses
        }

    async def _run(self) -> None:
        attempt = 0
        while True:
            address = self._next_address()
            session = _Session(self, address)
            hint: float | None = None
            try:
                await session.run()
            except grpc.aio.AioRpcError as error:
                hint = retry_delay_s(error)
                code = error.code().name
                self._lost(address, code.lower(), f"{code}: {error.details()}")
            except (StreamEndedError, TimeoutError, OSError) as error:
                self._lost(address, type(error).__name__, str(error) or type(error).__name__)
            except Exception:
                log.exception("ingest stream to %s failed unexpectedly", address)
                metrics.RECONNECTS.labels("internal").inc()
            self._record(address, session.established)
            if session.established:
                attempt = 0
            delay = backoff_delay(
                attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s
            )
            delay = max(delay, hint or 0.0)
            attempt += 1
            self._address_index += 1
            log.info("reconnecting to ingest in %.2fs", delay)
            await asyncio.sleep(delay)

    async def copy_to_archive(self, batch: SpooledBatch) -> None:
        """Alongside mode: write each batch once per process to the file output.

        A failed copy is logged and counted; the stream, not the copy, decides when the
        batch leaves the spool.
        """
        if self.archive is None or batch.batch_id in self.archived:
            return
        try:
            await asyncio.to_thread(self.archive.write, batch)
        except FileOutputError as error:
            log.error("batch %s: no file copy: %s", batch.batch_id, error)
            return
        self.archived.add(batch.batch_id)

    def _next_address(self) -> str:
        """The next address in rotation whose breaker lets a call through.

        When every breaker is open, the one due for a probe soonest is tried: the backoff
        alone then paces the attempts, so a lone address is never waited on longer.
        """
        addresses = self.settings.ingest.addresses
        for step in range(len(addresses)):
            address = addresses[(self._address_index + step) % len(addresses)]
            if self.breakers[address].allow():
                self._address_index += step
                return address
        soonest = min(addresses, key=lambda a: self.breakers[a].seconds_until_probe())
        self._address_index = addresses.index(soonest)
        return soonest

    def _record(self, address: str, established: bool) -> None:
        breaker = self.breakers[address]
        was_open = breaker.state is not BreakerState.CLOSED
        if established:
            breaker.record_success()
        else:
            breaker.record_failure()
        is_open = breaker.state is not BreakerState.CLOSED
        metrics.BREAKER_OPEN.labels(address).set(1 if is_open else 0)
        if is_open and not was_open:
            log.warning(
                "ingest %s failed %d times in a row: out of rotation for %.0fs",
                address,
                breaker.failure_threshold,
                breaker.open_s,
            )
        elif was_open and not is_open:
            log.info("ingest %s answered again: back in rotation", address)

    def _lost(self, address: str, cause: str, detail: str) -> None:
        metrics.RECONNECTS.labels(cause).inc()
        log.warning("ingest stream to %s lost: %s", address, detail)


class _Session:
    """One stream to one ingest address."""

    def __init__(self, shipper: Shipper, address: str) -> None:
        self.shipper = shipper
        self.settings = shipper.settings
        self.address = address
        self.established = False

    async def run(self) -> None:
        ingest = self.settings.ingest
        channel = open_channel(
            [self.address],
            self.shipper.tls,
            server_name=ingest.tls_server_name,
            gzip=self.settings.gzip,
        )
        try:
            call: StreamCall = stream_call(channel, STREAM, ingest_pb2.StreamResponse.FromString)()
            limits = await self._handshake(call)
            self.established = True
            metrics.CONNECTED.set(1)
            log.info(
                "streaming to ingest",
                extra={"address": self.address, "window": limits.max_unacked_batches},
            )
            await _Stream(self.shipper, call, limits).run()
        finally:
            metrics.CONNECTED.set(0)
            await channel.close()

    async def _handshake(self, call: StreamCall) -> ingest_pb2.Limits:
        hello = ingest_pb2.Hello(
            agent_id=self.shipper.agent_id,
            agent_version=AGENT_VERSION,
            hostname=self.shipper.hostname,
        )
        await write_message(call, ingest_pb2.StreamRequest(hello=hello))
        async with asyncio.timeout(self.settings.ingest.timeout_s):
            response = await call.read()
        if not isinstance(response, ingest_pb2.StreamResponse):
            raise StreamEndedError("ingest closed the stream before sending its limits")
        if response.WhichOneof("kind") != "limits":
            raise StreamEndedError("ingest answered the hello without limits")
        return response.limits


class _Stream:
    """An established stream: a sender within the window and a reader of acks."""

    def __init__(self, shipper: Shipper, call: StreamCall, limits: ingest_pb2.Limits) -> None:
        self.shipper = shipper
        self.spool = shipper.spool
        self.settings = shipper.settings
        self.call = call
        self.slots = asyncio.Semaphore(limits.max_unacked_batches or self.settings.max_in_flight)
        server_max = limits.max_events_per_batch or self.settings.adaptive_max_events
        self.sizer = BatchSizer(
            floor=min(self.settings.batch_max_events, server_max),
            ceiling=min(self.settings.adaptive_max_events, server_max),
            adaptive=self.settings.adaptive_batching,
        )
        self.max_bytes = batch_byte_limit(
            limits.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES, shipper.spool.min_free_disk_bytes
        )
        self.in_flight: dict[str, SpooledBatch] = {}
        self.spans: dict[str, trace.Span] = {}
        self.write_lock = asyncio.Lock()
        self.retries: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._send_loop(), name="shipper-send"),
            asyncio.create_task(self._read_loop(), name="shipper-read"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, *self.retries]:
                task.cancel()
            await asyncio.gather(*tasks, *self.retries, return_exceptions=True)
            self.end_spans("stream_lost")
        for task in done:
            task.result()

    async def _send_loop(self) -> None:
        for batch in await self.spool.pending_batches():
            await self.slots.acquire()
            await self._send(batch, retry_reason="reconnect")
        while True:
            await self.slots.acquire()
            batch = await self._next_batch()
            await self._send(batch, retry_reason=None)

    async def _next_batch(self) -> SpooledBatch:
        return await next_batch(
            self.spool,
            self.sizer,
            self.max_bytes,
            self.settings.batch_max_wait_s,
            lambda: self.shipper.draining,
            self._idle,
        )

    def _idle(self) -> bool:
        return self.settings.send_when_idle and not self.in_flight

    async def _send(self, batch: SpooledBatch, retry_reason: str | None) -> None:
        self.in_flight[batch.batch_id] = batch
        request = encoded_pb2.EncodedStreamRequest()
        batch.fill(request.batch, self.shipper.agent_id, is_retry=retry_reason is not None)
        request.batch.trace_context.update(self._start_span(batch, retry_reason))
        async with self.write_lock:
            await self.shipper.copy_to_archive(batch)
            await write_message(self.call, request)
        metrics.BATCHES_SENT.inc()
        if retry_reason is not None:
            metrics.BATCHES_RETRIED.labels(retry_reason).inc()

    def _start_span(self, batch: SpooledBatch, retry_reason: str | None) -> dict[str, str]:
        """A span from this send to its ack; the batch carries it so ingest continues it."""
        self._end_span(batch.batch_id, "resent")
        span = tracer.start_span(
            "agent.batch",
            attributes={
                "edgebot.batch_id": batch.batch_id,
                "edgebot.seq": batch.seq,
                "edgebot.events": len(batch.events),
                "edgebot.is_retry": retry_reason is not None,
                "edgebot.retry_reason": retry_reason or "",
            },
        )
        self.spans[batch.batch_id] = span
        return tracing.span_carrier(span)

    def _end_span(self, batch_id: str, outcome: str) -> None:
        span = self.spans.pop(batch_id, None)
        if span is None:
            return
        span.set_attribute("edgebot.ack_status", outcome)
        if outcome not in ("ok", "partial"):
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
        span.end()

    def end_spans(self, outcome: str) -> None:
        for batch_id in list(self.spans):
            self._end_span(batch_id, outcome)

    async def _read_loop(self) -> None:
        while True:
            response = await self.call.read()
            if not isinstance(response, ingest_pb2.StreamResponse):
                raise StreamEndedError("ingest closed the stream")
            if response.WhichOneof("kind") != "ack":
                log.warning("ignoring a %s message after the limits", response.WhichOneof("kind"))
                continue
            await self._on_ack(response.ack)

    async def _on_ack(self, ack: ingest_pb2.BatchAck) -> None:
        batch = self.in_flight.get(ack.batch_id)
        if batch is None:
            log.warning("ack for unknown batch %s ignored", ack.batch_id)
            return
        status = _STATUS_NAMES.get(ack.status, str(ack.status))
        metrics.BATCHES_ACKED.labels(status).inc()
        self._end_span(batch.batch_id, status)
        if ack.status == ingest_pb2.ACK_STATUS_OK:
            await self.spool.ack(batch.batch_id)
        elif ack.status == ingest_pb2.ACK_STATUS_PARTIAL:
            await self.spool.ack_partial(batch.batch_id, ack.errors)
        elif ack.status == ingest_pb2.ACK_STATUS_REJECTED:
            log.error("batch %s rejected by ingest: %s", batch.batch_id, ack.message)
            await self.spool.reject(batch.batch_id, ack.message or "rejected by ingest")
        else:
            self._retry_later(batch, ack)
            return
        self.shipper.stats.count(ack)
        del self.in_flight[batch.batch_id]
        self.slots.release()
        if self._idle():
            # Wakes a send loop waiting out batch_max_wait_s: what waits can go now.
            self.spool.appended.set()
        metrics.LAST_SHIP.set(time.time())
        self.shipper.progress.set()

    def _retry_later(self, batch: SpooledBatch, ack: ingest_pb2.BatchAck) -> None:
        """Send the same batch again after the server's delay; it keeps its window slot."""
        delay = self.settings.backoff_initial_s
        if ack.HasField("retry_delay"):
            delay = ack.retry_delay.ToNanoseconds() / NS_PER_S
        log.info("batch %s: retry in %.2fs (%s)", batch.batch_id, delay, ack.message)
        task = asyncio.create_task(self._resend_after(batch, delay))
        self.retries.add(task)
        task.add_done_callback(self.retries.discard)

    async def _resend_after(self, batch: SpooledBatch, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._send(batch, retry_reason="retry_ack")
        except Exception as error:
            # The stream is gone; the reconnect re-sends every pending batch anyway.
            log.info("re-send of %s failed: %s", batch.batch_id, error)
