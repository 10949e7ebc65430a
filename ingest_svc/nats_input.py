"""The NATS JetStream input: raw events from a subject take the same path as a gRPC batch.

Every ingest replica pulls from one durable consumer, so JetStream hands each message to one
replica at a time. Each message becomes an EventBatch (ingest_svc.nats_payloads); the
messages of one fetch are merged into as few batches as the batch limits allow, and each
batch goes through IngestServicer.handle_batch — validation, pipeline, the primary storage
commit — and only then are its messages acked. A downstream failure naks them with a delay
(redelivered later); a message that can never become events is written to the dead-letter
store and then terminated (never redelivered). A redelivery is answered as a duplicate by the
batch ledger (same batch id) or, grouped differently, by storage's event-id dedupe. At most
``max_inflight_messages`` are in flight per replica: fetching pauses until some are
answered, and while pipeline or storage is not serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from gen.edgebot.v1 import event_pb2, ingest_pb2
from ingest_svc import metrics
from ingest_svc.config import IngestSection, NatsSection
from ingest_svc.forwarder import Delivery
from ingest_svc.nats_payloads import MessageInfo, PayloadError, decode, merge
from mesh.backoff import backoff_delay
from mesh.config import ConfigError
from mesh.timeutil import datetime_to_ns, now_ns, ns_to_ts

log = logging.getLogger(__name__)
BatchHandler = Callable[[event_pb2.EventBatch], Awaitable[Delivery]]
DeadLetterKeeper = Callable[[event_pb2.EventBatch, list[event_pb2.DeadLetter]], Awaitable[Delivery]]
StateListener = Callable[[bool], Awaitable[None]]
DELIVERED = (ingest_pb2.ACK_STATUS_OK, ingest_pb2.ACK_STATUS_PARTIAL)
_INDEX = re.compile(r"^\[\d+\]\.")


class NatsSetupError(Exception):
    """The stream or consumer cannot be set up as configured; the message says why."""


def tls_context(settings: NatsSection) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls.ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def read_password(settings: NatsSection) -> str | None:
    if settings.password_file is None:
        return None
    try:
        return settings.password_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"nats.password_file: cannot read: {exc.strerror}") from None


class NatsInput:
    def __init__(
        self,
        settings: NatsSection,
        limits: IngestSection,
        handle_batch: BatchHandler,
        keep_dead_letters: DeadLetterKeeper,
        on_state: StateListener,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.handle_batch = handle_batch
        self.keep_dead_letters = keep_dead_letters
        self.on_state = on_state
        self.tls = tls_context(settings)
        self.password = read_password(settings)
        self.connected = False
        self.stream_name = ""
        self._client: Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._handlers: dict[asyncio.Task[None], int] = {}
        """Each handler task and how many messages it answers."""
        self._slot_freed = asyncio.Event()
        self._downstream_ready = asyncio.Event()
        self._last_error = ""

    # Life cycle -------------------------------------------------------------------------
    def set_downstream_ready(self, ready: bool) -> None:
        """Fetch only while pipeline and storage serve: messages wait in JetStream, not in a
        loop of naks. (A failure despite that still naks the message.)"""
        if ready == self._downstream_ready.is_set():
            return
        if ready:
            self._downstream_ready.set()
        else:
            self._downstream_ready.clear()
            log.warning("nats input paused: pipeline or storage is not serving")

    @property
    def fetching(self) -> bool:
        """Connected, consumer bound, downstream serving: messages are being pulled."""
        return self.connected and self._downstream_ready.is_set()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="nats-input")

    async def drain(self, timeout_s: float) -> None:
        """Stop fetching; let the messages in flight be answered (for up to ``timeout_s``)."""
        self._stopping.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=timeout_s)
        for task in list(self._handlers):
            task.cancel()

    async def close(self) -> None:
        await self.drain(0)
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()
        await self._set_connected(False)

    async def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        metrics.NATS_CONNECTED.set(1 if connected else 0)
        if connected:
            log.info(
                "nats input consuming",
                extra={"subject": self.settings.subject, "stream": self.stream_name,
                       "durable": self.settings.durable},
            )  # fmt: skip
        else:
            log.warning("nats input disconnected", extra={"subject": self.settings.subject})
        await self.on_state(connected)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                subscription = await self._subscribe()
                attempt = 0
                self._last_error = ""
                await self._set_connected(True)
                await self._pull(subscription)
            except asyncio.CancelledError:
                raise
            except NatsSetupError as exc:
                log.error("nats input: %s", exc)
            except Exception as exc:
                log.warning("nats input: cannot consume: %s: %s", type(exc).__name__, exc)
            await self._set_connected(False)
            await self._close_client()
            await asyncio.sleep(
                backoff_delay(
                    attempt, self.settings.reconnect_wait_s, self.settings.reconnect_max_s
                )
            )
            attempt += 1

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()

    # Connection, stream and consumer ----------------------------------------------------
    async def _connect(self) -> Client:
        settings = self.settings
        options: dict[str, Any] = {
            "servers": settings.servers,
            "name": f"edgebot-ingest/{settings.durable}",
            "connect_timeout": settings.connect_timeout_s,
            "reconnect_time_wait": settings.reconnect_wait_s,
            "max_reconnect_attempts": -1,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "error_cb": self._on_error,
        }
        if self.tls is not None:
            options["tls"] = self.tls
        if settings.user is not None:
            options["user"], options["password"] = settings.user, self.password
        client: Client = await nats.connect(**options)
        return client

    async def _on_disconnected(self) -> None:
        await self._set_connected(False)

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        await self._set_connected(True)

    async def _on_error(self, error: Exception) -> None:
        # The client retries every reconnect_wait_s: say each distinct problem once.
        text = f"{type(error).__name__}: {error}"
        if text != self._last_error:
            self._last_error = text
            log.warning("nats input: %s", text)

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        self._client = await self._connect()
        js = self._client.jetstream()
        self.stream_name = await self._stream(js)
        settings = self.settings
        consumer = ConsumerConfig(
            durable_name=settings.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.ack_wait_s,
            max_ack_pending=settings.max_ack_pending,
            max_deliver=-1,
            filter_subject=settings.subject,
        )
        try:
            # Creates the durable, or updates what JetStream lets change (ack_wait, ...).
            await js.add_consumer(self.stream_name, consumer)
        except nats.js.errors.BadRequestError as exc:
            raise NatsSetupError(
                f"consumer {settings.durable!r} on stream {self.stream_name!r} cannot take "
                f"this configuration: {exc.description}"
            ) from None
        return await js.pull_subscribe_bind(durable=settings.durable, stream=self.stream_name)

    async def _stream(self, js: JetStreamContext) -> str:
        settings = self.settings
        try:
            return await js.find_stream_name_by_subject(settings.subject)
        except nats.js.errors.NotFoundError:
            if not settings.create_stream:
                raise NatsSetupError(
                    f"no JetStream stream holds subject {settings.subject!r} and "
                    "nats.create_stream is false"
                ) from None
        await js.add_stream(
            StreamConfig(
                name=settings.stream,
                subjects=[settings.subject],
                storage=StorageType.FILE,
                max_age=settings.stream_max_age_s,
            )
        )
        log.info("nats input created stream", extra={"stream": settings.stream})
        return settings.stream

    # Fetching ---------------------------------------------------------------------------
    async def _pull(self, subscription: JetStreamContext.PullSubscription) -> None:
        settings = self.settings
        while not self._stopping.is_set():
            await self._downstream_ready.wait()
            free = await self._free_slots()
            try:
                messages = await subscription.fetch(
                    min(settings.fetch_batch, free), timeout=settings.fetch_timeout_s
                )
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from inside fetch
                continue
            except (nats.errors.ConnectionReconnectingError, nats.errors.NoRespondersError):
                await asyncio.sleep(settings.fetch_timeout_s)
                continue
            if not messages:
                continue
            task = asyncio.create_task(self._answer(messages))
            self._handlers[task] = len(messages)
            self._count_inflight()
            task.add_done_callback(self._handler_done)

    def _count_inflight(self) -> None:
        metrics.NATS_INFLIGHT.set(sum(self._handlers.values()))

    async def _free_slots(self) -> int:
        while sum(self._handlers.values()) >= self.settings.max_inflight_messages:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return self.settings.max_inflight_messages - sum(self._handlers.values())

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.pop(task, None)
        self._count_inflight()
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("nats input: message handler failed", exc_info=task.exception())

    # Messages ---------------------------------------------------------------------------
    async def _answer(self, messages: Sequence[Msg]) -> None:
        """Unusable messages are refused one by one; the others go downstream merged into
        as few batches as the limits allow (one storage commit for many small messages)."""
        decoded: list[Decoded] = []
        refusals = []
        for message in messages:
            info = message_info(message)
            try:
                batch = decode(message.data, message.headers, info, self.settings.agent_id)
            except PayloadError as problem:
                refusals.append(self._refuse(message, info, problem.field, problem.reason))
                continue
            decoded.append(Decoded(message, info, batch))
        await asyncio.gather(*refusals)
        limits = self.limits
        for group in groups(decoded, limits.max_events_per_batch, limits.max_batch_bytes):
            await self._deliver(group)

    async def _deliver(self, group: Sequence[Decoded]) -> None:
        batch = merge([(d.info, d.batch) for d in group], self.settings.agent_id)
        async with self._keeping_alive([d.message for d in group]):
            delivery = await self.handle_batch(batch)
        if delivery.status in DELIVERED:
            await asyncio.gather(*(d.message.ack() for d in group))
            metrics.NATS_MESSAGES.labels("acked").inc(len(group))
        elif delivery.status == ingest_pb2.ACK_STATUS_RETRY:
            await asyncio.gather(*(self._nak(d.message, d.info, delivery) for d in group))
        elif len(group) > 1:
            # Refused as a whole: find out which message it is about, one at a time.
            for one in group:
                await self._deliver([one])
        else:
            field, _, reason = delivery.message.partition(": ")
            only = group[0]
            await self._refuse(only.message, only.info, field or "batch", reason or "refused")

    async def _refuse(self, message: Msg, info: MessageInfo, field: str, reason: str) -> None:
        """Keep the message as a dead letter, then terminate it; nak if it cannot be kept."""
        header = event_pb2.EventBatch(
            batch_id=info.batch_id, agent_id=self.settings.agent_id, seq=info.stream_seq
        )
        letter = dead_letter(message, info, field, reason, header, self.limits.max_batch_bytes)
        async with self._keeping_alive([message]):
            kept = await self.keep_dead_letters(header, [letter])
        if kept.status not in DELIVERED:
            await self._nak(message, info, kept)
            return
        await message.term()
        metrics.NATS_MESSAGES.labels("term").inc()
        metrics.NATS_TERMINATED.labels(_INDEX.sub("", field)).inc()
        log.warning(
            "nats message terminated and dead-lettered",
            extra={"stream": info.stream, "stream_seq": info.stream_seq, "field": field,
                   "reason": reason},
        )  # fmt: skip

    async def _nak(self, message: Msg, info: MessageInfo, delivery: Delivery) -> None:
        delay = delivery.retry_delay_s or self.settings.nak_delay_s
        await message.nak(delay=delay)
        metrics.NATS_MESSAGES.labels("nak").inc()
        log.info(
            "nats message not stored, redelivery in %.1fs: %s",
            delay,
            delivery.message,
            extra={"stream_seq": info.stream_seq, "deliveries": info.deliveries},
        )

    @contextlib.asynccontextmanager
    async def _keeping_alive(self, messages: Sequence[Msg]) -> AsyncIterator[None]:
        """In-progress signals while messages are worked on, so a slow pipeline or storage
        call does not make JetStream hand them to another replica too."""
        ticker = asyncio.create_task(self._tick(messages))
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _tick(self, messages: Sequence[Msg]) -> None:
        while True:
            await asyncio.sleep(self.settings.ack_wait_s / 3)
            for message in messages:
                with contextlib.suppress(Exception):
                    await message.in_progress()


@dataclass(frozen=True)
class Decoded:
    message: Msg
    info: MessageInfo
    batch: event_pb2.EventBatch


def groups(decoded: Sequence[Decoded], max_events: int, max_bytes: int) -> list[list[Decoded]]:
    """Consecutive messages whose batches fit the batch limits together; a message over a
    limit stays alone (and is refused by ingest's batch checks)."""
    found: list[list[Decoded]] = []
    events = size = 0
    for item in decoded:
        count, bytes_ = len(item.batch.events), item.batch.ByteSize()
        if found and events + count <= max_events and size + bytes_ <= max_bytes:
            found[-1].append(item)
            events, size = events + count, size + bytes_
        else:
            found.append([item])
            events, size = count, bytes_
    return found


def message_info(message: Msg) -> MessageInfo:
    meta = message.metadata
    published = datetime_to_ns(meta.timestamp) if meta.timestamp else now_ns()
    return MessageInfo(
        stream=meta.stream,
        stream_seq=meta.sequence.stream,
        subject=message.subject,
        published_ns=published,
        deliveries=meta.num_delivered or 1,
    )


def dead_letter(
    message: Msg,
    info: MessageInfo,
    field: str,
    reason: str,
    header: event_pb2.EventBatch,
    max_raw_bytes: int,
) -> event_pb2.DeadLetter:
    """The message as it came, with why it was refused and where it sat in the stream."""
    content_type = next(
        (v for k, v in (message.headers or {}).items() if k.lower() == "content-type"), ""
    )
    event = event_pb2.Event(
        id=info.event_id(),
        type="nats",
        source=f"nats/{info.subject}",
        message=f"refused NATS message: {field}: {reason}",
        raw=message.data[:max_raw_bytes],
        attributes={
            "nats.subject": info.subject,
            "nats.stream": info.stream,
            "nats.stream_seq": str(info.stream_seq),
            "nats.deliveries": str(info.deliveries),
            "nats.content_type": content_type,
            "nats.bytes": str(len(message.data)),
        },
    )
    ns_to_ts(info.published_ns, event.time)
    ns_to_ts(info.published_ns, event.observed_time)
    error = event_pb2.EventError(index=0, event_id=event.id, field=field, reason=reason)
    return event_pb2.DeadLetter(
        error=error,
        event=event,
        stage="ingest",
        agent_id=header.agent_id,
        batch_id=header.batch_id,
    )
