"""NMEA 0183 GPS receivers on a serial port, a TCP stream or gpsd.

Sentences are checked (checksum) and merged into the receiver's latest fix; a position
event is emitted when a GGA or RMC sentence arrives and ``min_interval_s`` has passed since
the previous event. A lost or silent source is reconnected with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time

import serial_asyncio

from edge_agent import metrics
from edge_agent.config_polling import NmeaInputConfig, NmeaSource, parse_source
from edge_agent.inputs.base import Input, hand_to_spool
from edge_agent.parsers.nmea import FixState, NmeaError, parse_sentence
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.ids import uuid7
from mesh.timeutil import datetime_to_ns, now_ns, ns_to_ts

log = logging.getLogger(__name__)
GPSD_WATCH = b'?WATCH={"enable":true,"nmea":true};\n'
POSITION_SENTENCES = ("GGA", "RMC")


class NmeaInput(Input):
    def __init__(self, config: NmeaInputConfig, spool: Spool, agent_id: str) -> None:
        self.config = config
        self.spool = spool
        self.name = f"nmea:{config.name}"
        self.source = f"{agent_id}/{self.name}"
        self.where: NmeaSource = parse_source(config.source)
        self.host = socket.gethostname() if self.where.kind == "serial" else self.where.host
        self.fix = FixState()
        self.connected = asyncio.Event()
        self._last_emit = -float("inf")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-read")
        log.info("NMEA input", extra={"input": self.name, "source": self.config.source})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = self.config.reconnect_initial_s
        while True:
            try:
                reader, writer = await self._open()
            except (OSError, ValueError) as error:
                self._count_connection_error("connect_failed", error)
            else:
                self.connected.set()
                delay = self.config.reconnect_initial_s
                await self._read_until_lost(reader, writer)
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        limit = self.config.max_sentence_bytes + 2
        if self.where.kind == "serial":
            reader, writer = await serial_asyncio.open_serial_connection(
                url=self.where.path, baudrate=self.where.baud, limit=limit
            )
            return reader, writer
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # races with completion, and stop() would then wait for ever.
        async with asyncio.timeout(self.config.read_timeout_s):
            reader, writer = await asyncio.open_connection(
                self.where.host, self.where.port, limit=limit
            )
        if self.where.kind == "gpsd":
            writer.write(GPSD_WATCH)
            await writer.drain()
        return reader, writer

    async def _read_until_lost(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                line = await self._read_line(reader)
                if line is None:
                    self._count_connection_error("closed", None)
                    return
                await self.handle_line(line)
        except TimeoutError:
            self._count_connection_error("read_timeout", None)
        except OSError as error:
            self._count_connection_error("reset", error)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next line; None at end of stream. Overlong lines are counted and skipped."""
        while True:
            try:
                async with asyncio.timeout(self.config.read_timeout_s):
                    line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return None
            except asyncio.LimitOverrunError as overrun:
                await reader.readexactly(overrun.consumed)
                metrics.NMEA_SENTENCES.labels(self.name, "oversize").inc()
                await self._skip_rest_of_line(reader)
                continue
            return line

    async def _skip_rest_of_line(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                async with asyncio.timeout(self.config.read_timeout_s):
                    await reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as overrun:
                await reader.readexactly(overrun.consumed)

    async def handle_line(self, line: bytes) -> None:
        metrics.INPUT_BYTES.labels(self.name).inc(len(line))
        if self.where.kind == "gpsd" and line.startswith(b"{"):
            return  # gpsd's own JSON reports (VERSION, DEVICES, WATCH)
        if not line.strip():
            return
        metrics.MESSAGES_RECEIVED.labels(self.name).inc()
        sentence = parse_sentence(line, self.config.require_checksum)
        if isinstance(sentence, NmeaError):
            metrics.NMEA_SENTENCES.labels(self.name, sentence.reason).inc()
            return
        metrics.NMEA_SENTENCES.labels(self.name, "ok").inc()
        self.fix.update(sentence)
        if sentence.kind in POSITION_SENTENCES and self.fix.has_position and self._due():
            await hand_to_spool(self.spool, [self._event()])

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last_emit < self.config.min_interval_s:
            return False
        self._last_emit = now
        return True

    def _event(self) -> event_pb2.Event:
        values, fix_time = self.fix.take()
        received = now_ns()
        message = f"GPS fix {values['gps.lat']},{values['gps.lon']}"
        if "gps.speed_kmh" in values:
            message += f" {values['gps.speed_kmh']} km/h"
        event = event_pb2.Event(
            id=uuid7(),
            type="gps",
            source=self.source,
            host=self.host,
            service="nmea",
            severity=event_pb2.SEVERITY_INFORMATIONAL,
            message=message,
            attributes=values,
        )
        ns_to_ts(_fix_ns(fix_time, received), event.time)
        ns_to_ts(received, event.observed_time)
        return event

    def _count_connection_error(self, reason: str, error: BaseException | None) -> None:
        metrics.INPUT_CONNECTION_ERRORS.labels(self.name, reason).inc()
        log.warning("NMEA source %s: %s %s", self.config.source, reason, error or "")


def _fix_ns(fix_time: dt.datetime | None, received_ns: int) -> int:
    return received_ns if fix_time is None else datetime_to_ns(fix_time)
