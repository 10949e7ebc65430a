"""Syslog over UDP: datagrams are buffered for a few milliseconds and committed together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import metrics
from edge_agent.config import SyslogUdpConfig
from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.parsers.syslog import Received, parse_syslog, raw_event
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns

log = logging.getLogger(__name__)


def set_receive_buffer(sock: Any, wanted: int) -> int:
    """Ask for a socket receive buffer of ``wanted`` bytes; returns what the kernel granted.

    A burst larger than the buffer is dropped by the kernel before the agent sees it, so
    the buffer is raised past the system default; SO_RCVBUFFORCE (root) ignores rmem_max.
    """
    if wanted > 0:
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        try:
            if force is None:
                raise PermissionError
            sock.setsockopt(socket.SOL_SOCKET, force, wanted)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


def kernel_drops(inode: int) -> float:
    """Datagrams the kernel dropped for the socket with this inode (Linux /proc/net/udp*)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == str(inode):
                return float(fields[-1])
    return 0.0


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
        self.senders = metrics.SourceTally(self.name, config.max_tracked_sources)
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
        sock = transport.get_extra_info("socket")
        granted = set_receive_buffer(sock, self.config.receive_buffer_bytes)
        inode = os.fstat(sock.fileno()).st_ino
        metrics.UDP_KERNEL_DROPS.labels(self.name).set_function(lambda: kernel_drops(inode))
        log.info("syslog UDP receive buffer", extra={"bytes": granted})
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
        self.senders.count(src_ip)
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
                async with asyncio.timeout(self.config.flush_interval_s):
                    await self._full.wait()
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
