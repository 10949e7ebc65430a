"""Syslog over UDP: datagrams are buffered for a few milliseconds and committed together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zoneinfo
from dataclasses import dataclass
from typing import Any

from edge_agent import metrics
from edge_agent.config import SyslogUdpConfig
from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.parsers.syslog import Received, parse_syslog, raw_event
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Datagram:
    data: bytes
    src_ip: str
    received_ns: int


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, sink: SyslogUdpInput) -> None:
        self.sink = sink

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.sink.received(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.warning("syslog UDP socket error: %s", exc)


class SyslogUdpInput(Input):
    name = "syslog_udp"

    def __init__(self, config: SyslogUdpConfig, spool: Spool, agent_id: str) -> None:
        self.config = config
        self.spool = spool
        self.source = f"{agent_id}/{self.name}"
        self.zone = zoneinfo.ZoneInfo(config.timezone)
        self.port: int | None = None
        self._pending: list[_Datagram] = []
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.config.host, self.config.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self._flusher = asyncio.create_task(self._flush_loop(), name="syslog-udp-flush")
        log.info("syslog UDP listening", extra={"host": self.config.host, "port": self.port})

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

    def received(self, data: bytes, src_ip: str) -> None:
        metrics.MESSAGES_RECEIVED.labels(self.name).inc()
        if len(self._pending) >= self.config.max_pending:
            metrics.SPOOL_DROPPED.labels("overflow").inc()
            return
        self._pending.append(_Datagram(data, src_ip, now_ns()))
        self._has_data.set()
        if len(self._pending) >= self.config.flush_max_events:
            self._full.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._has_data.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.config.flush_interval_s)
            await self._flush()

    async def _flush(self) -> None:
        limit = self.config.flush_max_events
        while self._pending:
            chunk = self._pending[:limit]
            del self._pending[:limit]
            await hand_to_spool(self.spool, [self._event(d) for d in chunk])
        self._has_data.clear()
        self._full.clear()

    def _event(self, datagram: _Datagram) -> event_pb2.Event:
        received = Received(datagram.received_ns, datagram.src_ip, self.source, self.zone)
        data = datagram.data[: self.config.max_message_bytes]
        try:
            event = parse_syslog(data, received)
        except Exception as error:
            # The parser is written never to raise; should it anyway, the datagram is kept.
            log.exception("syslog parser failed")
            text = data.decode("utf-8", errors="replace")
            event = raw_event(data, text, received, f"parser failure: {error!r}")
        if len(datagram.data) > len(data):
            event.attributes["input.truncated"] = "true"
        return event
