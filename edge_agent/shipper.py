"""The shipper: streams spooled batches to IngestService and removes them only on a final ack.

A stream starts with Hello -> Limits; then up to ``limits.max_unacked_batches`` batches are
in flight. Every batch formed but not finally acknowledged stays in the spool with its
``batch_id`` and ``seq``; after a reconnect (or a restart) those batches are sent again,
first, with ``is_retry`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

import grpc

from edge_agent import metrics
from edge_agent.config import AgentConfig
from edge_agent.spool import Spool, SpooledBatch
from gen.edgebot.v1 import ingest_pb2, ingest_pb2_grpc
from mesh.backoff import backoff_delay
from mesh.channel import open_channel
from mesh.errors import retry_delay_s
from mesh.timeutil import NS_PER_S, now_ns

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
# Used when the server advertises no byte limit; ingest's own default is 8 MiB.
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024
_STATUS_NAMES = {
    value: name.removeprefix("ACK_STATUS_").lower() for name, value in ingest_pb2.AckStatus.items()
}
StreamCall = grpc.aio.StreamStreamCall[ingest_pb2.StreamRequest, ingest_pb2.StreamResponse]


class StreamEndedError(Exception):
    """The server closed the stream, or answered something the protocol does not allow."""


class Shipper:
    def __init__(self, config: AgentConfig, spool: Spool) -> None:
        self.agent_id = config.agent.id
        self.tls = config.tls
        self.settings = config.shipper
        self.spool = spool
        self.hostname = socket.gethostname()
        self.draining = False
        self.progress = asyncio.Event()
        self._address_index = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shipper")

    async def stop(self, grace_s: float) -> None:
        """Send what is spooled for up to ``grace_s``, then stop; the rest stays spooled."""
        self.draining = True
        self.spool.appended.set()
        try:
            async with asyncio.timeout(grace_s):
                await self._drained()
        except TimeoutError:
            log.warning(
                "shipper stopping with %d events still spooled (grace %.1fs)",
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

    async def _run(self) -> None:
        attempt = 0
        addresses = self.settings.ingest.addresses
        while True:
            address = addresses[self._address_index % len(addresses)]
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
            call: StreamCall = ingest_pb2_grpc.IngestServiceStub(channel).Stream()
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
        await call.write(ingest_pb2.StreamRequest(hello=hello))
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
        self.max_events = min(
            self.settings.batch_max_events,
            limits.max_events_per_batch or self.settings.batch_max_events,
        )
        self.max_bytes = limits.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES
        self.in_flight: dict[str, SpooledBatch] = {}
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
        """Wait until a full batch is spooled, or the oldest waiting event waited long enough."""
        max_wait_ns = int(self.settings.batch_max_wait_s * NS_PER_S)
        while True:
            self.spool.appended.clear()
            waiting = await self.spool.waiting(self.max_events)
            timeout: float | None = None
            if waiting.oldest_appended_ns is not None:
                age_ns = now_ns() - waiting.oldest_appended_ns
                ready = waiting.count >= self.max_events or age_ns >= max_wait_ns
                if ready or self.shipper.draining:
                    batch = await self.spool.form_batch(self.max_events, self.max_bytes)
                    if batch is not None:
                        return batch
                    continue
                timeout = (max_wait_ns - age_ns) / NS_PER_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.spool.appended.wait()

    async def _send(self, batch: SpooledBatch, retry_reason: str | None) -> None:
        self.in_flight[batch.batch_id] = batch
        proto = batch.to_proto(self.shipper.agent_id, is_retry=retry_reason is not None)
        async with self.write_lock:
            await self.call.write(ingest_pb2.StreamRequest(batch=proto))
        metrics.BATCHES_SENT.inc()
        if retry_reason is not None:
            metrics.BATCHES_RETRIED.labels(retry_reason).inc()

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
        del self.in_flight[batch.batch_id]
        self.slots.release()
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
