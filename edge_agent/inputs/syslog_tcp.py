"""Syslog over TCP, optionally TLS (RFC 6587 / RFC 5425).

Each connection reads, cuts frames (``framing.Framer``) and waits until its events are
committed before it reads again; connections share transactions (group commit). When the
spool is full the commit waits for room, so reading pauses and TCP flow control holds the
senders back: nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent import metrics
from edge_agent.config import SyslogTcpConfig, SyslogTlsConfig
from edge_agent.inputs.base import Input, PendingCommit, commit_waiting
from edge_agent.inputs.framing import Frame, Framer
from edge_agent.parsers.syslog import Received, parse_syslog, raw_event
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError
from mesh.timeutil import now_ns

log = logging.getLogger(__name__)


def server_ssl_context(tls: SyslogTlsConfig, section: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context; client certificates verified against ca_file if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"{section}.cert_file/key_file: cannot load: {error}") from None
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"{section}.ca_file: cannot load: {error}") from None
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


@dataclass(frozen=True)
class _Peer:
    ip: str
    port: int


class _GroupCommitter:
    """Commits events of many connections together; each connection awaits its own."""

    def __init__(self, spool: Spool, input_name: str, poll_s: float) -> None:
        self.spool = spool
        self.input_name = input_name
        self.poll_s = poll_s
        self._waiting: list[tuple[list[event_pb2.Event], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.input_name}-commit")

    async def commit(self, events: list[event_pb2.Event]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((events, done))
        self._wake.set()
        # A cancelled connection leaves its events queued: they are committed all the same.
        await asyncio.shield(done)

    async def stop(self) -> None:
        """Commit what is queued; if the spool is still full, what it refuses is counted.

        Not a cancellation: an append already running on the spool thread must finish
        and be accounted for, or its events could be appended twice.
        """
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiting, self._waiting = self._waiting, []
            if waiting:
                await self._commit(waiting)
            if self._stopping.is_set() and not self._waiting:
                return

    async def _commit(
        self, waiting: list[tuple[list[event_pb2.Event], asyncio.Future[None]]]
    ) -> None:
        pending = PendingCommit([event for events, _ in waiting for event in events])
        try:
            await commit_waiting(
                self.spool, pending, self.input_name, self.poll_s, give_up=self._stopping
            )
        except Exception:
            log.exception("spool append failed; %d events dropped", pending.remaining)
            metrics.SPOOL_DROPPED.labels("error").inc(pending.remaining)
        else:
            if pending.remaining:
                log.warning("stopping with a full spool: %d events dropped", pending.remaining)
                metrics.SPOOL_DROPPED.labels("spool_full").inc(pending.remaining)
        for _, done in waiting:
            if not done.done():
                done.set_result(None)


class SyslogTcpInput(Input):
    def __init__(
        self, config: SyslogTcpConfig, spool: Spool, agent_id: str, name: str = "syslog_tcp"
    ) -> None:
        self.name = name
        self.config = config
        self.source = f"{agent_id}/{name}"
        self.senders = metrics.SourceTally(name, config.max_tracked_sources)
        self.zone = zoneinfo.ZoneInfo(config.timezone)
        self.transport_name = "tls" if config.tls.enabled else "tcp"
        self.ssl_context = (
            server_ssl_context(config.tls, f"inputs.{name}.tls") if config.tls.enabled else None
        )
        self.port: int | None = None
        self._committer = _GroupCommitter(spool, name, config.blocked_poll_s)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._committer.start()
        self._server = await asyncio.start_server(
            self._serve, self.config.host, self.config.port, limit=self.config.read_bytes
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "syslog %s listening",
            self.transport_name.upper(),
            extra={"input": self.name, "host": self.config.host, "port": self.port},
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await self._committer.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        address = writer.get_extra_info("peername") or ("", 0)
        peer = _Peer(str(address[0]), int(address[1]))
        if len(self._connections) >= self.config.max_connections:
            self._count_error("max_connections", peer)
            writer.close()
            return
        self._connections.add(task)
        metrics.INPUT_CONNECTIONS.labels(self.name).inc()
        try:
            if await self._handshake(writer, peer):
                await self._read(reader, peer)
        except (ConnectionError, OSError, ssl.SSLError) as error:
            self._count_error("reset", peer, error)
        finally:
            self._connections.discard(task)
            metrics.INPUT_CONNECTIONS.labels(self.name).dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handshake(self, writer: asyncio.StreamWriter, peer: _Peer) -> bool:
        if self.ssl_context is None:
            return True
        try:
            await writer.start_tls(
                self.ssl_context, ssl_handshake_timeout=self.config.tls.handshake_timeout_s
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as error:
            self._count_error("tls_handshake", peer, error)
            return False
        return True

    async def _read(self, reader: asyncio.StreamReader, peer: _Peer) -> None:
        framer = Framer(self.config.max_message_bytes)
        while True:
            try:
                async with asyncio.timeout(self.config.idle_timeout_s):
                    data = await reader.read(self.config.read_bytes)
            except TimeoutError:
                self._count_error("idle_timeout", peer)
                data = b""
            if not data:
                await self._commit(framer.finish(), peer)
                return
            metrics.INPUT_BYTES.labels(self.name).inc(len(data))
            frames = framer.feed(data)
            if frames:
                await self._commit(frames, peer)

    async def _commit(self, frames: Sequence[Frame], peer: _Peer) -> None:
        if not frames:
            return
        metrics.MESSAGES_RECEIVED.labels(self.name).inc(len(frames))
        self.senders.count(peer.ip, len(frames))
        for frame in frames:
            if frame.error is not None:
                metrics.FRAMING_ERRORS.labels(self.name, frame.error).inc()
        await self._committer.commit([self._event(frame, peer) for frame in frames])

    def _event(self, frame: Frame, peer: _Peer) -> event_pb2.Event:
        received = Received(now_ns(), peer.ip, self.source, self.zone)
        try:
            event = parse_syslog(frame.data, received)
        except Exception as error:
            # The parser is written never to raise; should it anyway, the frame is kept.
            log.exception("syslog parser failed")
            text = frame.data.decode("utf-8", errors="replace")
            event = raw_event(frame.data, text, received, f"parser failure: {error!r}")
        event.attributes["net.src_port"] = str(peer.port)
        event.attributes["input.transport"] = self.transport_name
        if frame.truncated:
            event.attributes["input.truncated"] = "true"
        return event

    def _count_error(self, reason: str, peer: _Peer, error: BaseException | None = None) -> None:
        metrics.INPUT_CONNECTION_ERRORS.labels(self.name, reason).inc()
        log.warning(
            "%s connection from %s:%d: %s%s",
            self.name,
            peer.ip,
            peer.port,
            reason,
            f" ({error})" if error else "",
        )
