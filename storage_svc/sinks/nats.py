"""The NATS JetStream sink: each stored event published to ``<prefix>.<type>`` (the original
ETL service's "events.enriched" subjects) as its JSON document.

Every message carries ``Nats-Msg-Id: <event id>``, so JetStream keeps one copy of an event
however often it is published within the stream's duplicate window: the outbox's
at-least-once delivery (a batch published again after a failure or a restart) becomes
exactly-once in the stream. A write publishes the whole batch asynchronously and waits for
every ack; a batch not fully acknowledged in ``publish_timeout_s`` fails and is published
again, its acknowledged part then coming back as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig

from gen.edgebot.v1 import event_pb2
from storage_svc.sinks.base import (
    BatchWrite,
    SecondarySink,
    SinkOpenError,
    SinkWriteError,
    WriteOutcome,
)
from storage_svc.sinks.event_json import event_json
from storage_svc.sinks.secrets import SecretUnavailable, read_secret
from storage_svc.sinks_config import NatsSinkSection

log = logging.getLogger(__name__)
NATS_ERRORS = (nats.errors.Error, OSError, TimeoutError)
_NOT_IN_SUBJECT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
RECONNECT_WAIT_S = 1.0


def subject_for(prefix: str, event_type: str) -> str:
    token = _NOT_IN_SUBJECT_TOKEN.sub("_", event_type) or "unknown"
    return f"{prefix}.{token}"


class NatsSink(SecondarySink):
    kind = "nats"

    def __init__(self, settings: NatsSinkSection) -> None:
        super().__init__(settings.name, settings.down_after_failures)
        self.settings = settings
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None

    async def open(self) -> None:
        client = Client()
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await client.connect(**self._connect_options())
            jetstream = client.jetstream(
                timeout=self.settings.publish_timeout_s,
                publish_async_max_pending=self.settings.max_pending,
            )
            await self._ensure_stream(jetstream)
        except SecretUnavailable as exc:
            raise SinkOpenError(f"nats sink {self.name}: {exc}") from None
        except (*NATS_ERRORS, SinkOpenError) as exc:
            with contextlib.suppress(*NATS_ERRORS):
                await client.close()
            if isinstance(exc, SinkOpenError):
                raise
            raise SinkOpenError(
                f"nats sink {self.name}: cannot connect to {', '.join(self.settings.servers)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._client, self._jetstream = client, jetstream

    def _connect_options(self) -> dict[str, Any]:
        settings = self.settings
        options: dict[str, Any] = {
            "servers": settings.servers,
            "name": "edgebot-storage",
            "connect_timeout": settings.connect_timeout_s,
            # Keep reconnecting once connected; the first connect is bounded by our timeout.
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        password = read_secret("password", settings.password_file, settings.password_env)
        if password is not None:
            options["user"], options["password"] = settings.user, password
        token = read_secret("token", settings.token_file, settings.token_env)
        if token is not None:
            options["token"] = token
        return options

    async def _ensure_stream(self, jetstream: JetStreamContext) -> None:
        settings = self.settings
        subjects = f"{settings.subject_prefix}.>"
        try:
            await jetstream.stream_info(settings.stream)
            return
        except nats.js.errors.NotFoundError:
            if not settings.create_stream:
                raise SinkOpenError(
                    f"nats sink {self.name}: stream {settings.stream} does not exist and "
                    "create_stream is false"
                ) from None
        await jetstream.add_stream(
            StreamConfig(
                name=settings.stream,
                subjects=[subjects],
                storage=StorageType(settings.stream_storage),
                duplicate_window=settings.duplicate_window_s,
                max_age=settings.stream_max_age_s,
                max_bytes=settings.stream_max_bytes,
            )
        )
        log.info("nats stream %s created for %s", settings.stream, subjects)

    async def _on_error(self, error: Exception) -> None:
        log.warning("nats sink %s: %s: %s", self.name, type(error).__name__, error)

    async def _on_disconnected(self) -> None:
        log.warning("nats sink %s: disconnected, reconnecting", self.name)

    async def _on_reconnected(self) -> None:
        log.info("nats sink %s: reconnected", self.name)

    async def close(self) -> None:
        client, self._client, self._jetstream = self._client, None, None
        if client is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await client.close()

    async def deliver(self, batch: BatchWrite) -> WriteOutcome:
        if self._jetstream is None:
            raise SinkWriteError(f"nats sink {self.name} is not open")
        started = time.perf_counter()
        try:
            acks = await self._publish_all(self._jetstream, batch.events)
        except NATS_ERRORS as exc:
            raise SinkWriteError(
                f"nats publish of {len(batch.events)} events failed: {type(exc).__name__}: {exc}"
            ) from exc
        duplicates = sum(1 for ack in acks if ack.duplicate)
        return WriteOutcome(
            False, len(acks) - duplicates, duplicates, time.perf_counter() - started
        )

    async def _publish_all(
        self, jetstream: JetStreamContext, events: Sequence[event_pb2.Event]
    ) -> list[PubAck]:
        prefix = self.settings.subject_prefix
        pending: list[asyncio.Future[PubAck]] = []
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                for event in events:
                    pending.append(
                        await jetstream.publish_async(
                            subject_for(prefix, event.type),
                            event_json(event).encode(),
                            headers={"Nats-Msg-Id": event.id},
                        )
                    )
                return list(await asyncio.gather(*pending))
        finally:
            for future in pending:
                future.cancel()
