"""NetFlow v5/v9 and IPFIX collector over UDP: one event per flow record.

Datagrams are buffered for a few milliseconds and decoded in arrival order (templates come
before the data they describe), and their flows are committed together, as the syslog UDP
input does. A datagram that cannot be decoded is kept as a ``raw`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from edge_agent import metrics
from edge_agent.config_polling import NetflowConfig
from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.inputs.syslog_udp import kernel_drops, set_receive_buffer
from edge_agent.parsers.netflow import TemplateCache, decode_datagram, flow_event
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.ids import uuid7
from mesh.timeutil import now_ns, ns_to_ts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Datagram:
    data: bytes
    exporter: str
    received_ns: int


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, sink: NetflowInput) -> None:
        self.sink = sink

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.sink.received(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.warning("NetFlow UDP socket error: %s", exc)


class NetflowInput(Input):
    name = "netflow"

    def __init__(self, config: NetflowConfig, spool: Spool, agent_id: str) -> None:
        self.config = config
        self.spool = spool
        self.source = f"{agent_id}/{self.name}"
        self.port: int | None = None
        self.templates = TemplateCache(
            config.template_timeout_s,
            config.max_templates,
            config.hold_unknown_s,
            config.max_held_sets,
        )
        self._pending: list[_Datagram] = []
        self._has_data = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.config.host, self.config.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        sock = transport.get_extra_info("socket")
        set_receive_buffer(sock, self.config.receive_buffer_bytes)
        inode = os.fstat(sock.fileno()).st_ino
        metrics.UDP_KERNEL_DROPS.labels(self.name).set_function(lambda: kernel_drops(inode))
        metrics.NETFLOW_TEMPLATES.set_function(lambda: len(self.templates.templates))
        self._flusher = asyncio.create_task(self._flush_loop(), name="netflow-flush")
        log.info("NetFlow collector listening", extra={"host": self.config.host, "port": self.port})

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self._flush()

    def received(self, data: bytes, exporter: str) -> None:
        metrics.MESSAGES_RECEIVED.labels(self.name).inc()
        metrics.INPUT_BYTES.labels(self.name).inc(len(data))
        if len(self._pending) >= self.config.max_pending:
            metrics.SPOOL_DROPPED.labels("overflow").inc()
            return
        self._pending.append(_Datagram(data, exporter, now_ns()))
        self._has_data.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._has_data.wait()
            await asyncio.sleep(self.config.flush_interval_s)
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._has_data.clear()
        events: list[event_pb2.Event] = []
        for datagram in pending:
            events.extend(self._events(datagram))
            if len(events) >= self.config.flush_max_events:
                await hand_to_spool(self.spool, events)
                events = []
        if events:
            await hand_to_spool(self.spool, events)

    def _events(self, datagram: _Datagram) -> list[event_pb2.Event]:
        decoded = decode_datagram(
            datagram.data,
            datagram.exporter,
            self.templates,
            datagram.received_ns,
            self.config.max_records_per_datagram,
            self.config.max_attributes_per_flow,
        )
        for reason, count in decoded.skipped.items():
            metrics.NETFLOW_SKIPPED.labels(reason).inc(count)
        events = [flow_event(r, self.source, datagram.received_ns) for r in decoded.records]
        if decoded.error is not None:
            log.debug("NetFlow datagram from %s: %s", datagram.exporter, decoded.error)
            events.append(self._raw_event(datagram, decoded.error, decoded.version))
        return events

    def _raw_event(self, datagram: _Datagram, reason: str, version: int) -> event_pb2.Event:
        event = event_pb2.Event(
            id=uuid7(),
            type="raw",
            source=self.source,
            host=datagram.exporter,
            service="netflow",
            severity=event_pb2.SEVERITY_WARNING,
            message=f"undecodable NetFlow datagram ({len(datagram.data)} bytes): {reason}",
            attributes={
                "parse.error": reason,
                "netflow.exporter": datagram.exporter,
                "netflow.version": str(version),
            },
            raw=datagram.data,
        )
        ns_to_ts(datagram.received_ns, event.time)
        ns_to_ts(datagram.received_ns, event.observed_time)
        return event
