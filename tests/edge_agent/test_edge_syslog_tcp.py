"""Syslog over TCP and TLS with real senders: util-linux logger, SysLogHandler, a TLS client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import eventually
from prometheus_client import REGISTRY
from support import Pki

from edge_agent import AgentConfig
from edge_agent.config import SyslogTcpConfig
from edge_agent.inputs.syslog_tcp import SyslogTcpInput
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError, load_config

SEV = event_pb2.Severity
HOST = os.uname().nodename
MakeInput = Callable[..., Awaitable[SyslogTcpInput]]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path / "spool.db", 1 << 30)
    await spool.open()
    yield spool
    await spool.close()


@pytest.fixture
async def make_input(spool: Spool) -> AsyncIterator[MakeInput]:
    started: list[SyslogTcpInput] = []

    async def make(
        name: str = "syslog_tcp", target: Spool = spool, **settings: Any
    ) -> SyslogTcpInput:
        config = SyslogTcpConfig.model_validate(
            {"enabled": True, "host": "127.0.0.1", "port": 0, **settings}
        )
        tcp = SyslogTcpInput(config, target, "site-a", name)
        await tcp.start()
        started.append(tcp)
        return tcp

    yield make
    for tcp in started:
        await tcp.stop()


async def spooled(spool: Spool, count: int, within: float = 5) -> list[event_pb2.Event]:
    await eventually(lambda: spool.events >= count, within, f"{count} spooled events")
    await asyncio.sleep(0.05)  # anything beyond the expected count would show up too
    batch = await spool.form_batch(100_000, 1 << 30)
    assert batch is not None
    return [event_pb2.Event.FromString(data) for data in batch.events]


async def logger(port: int, lines: list[str], *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "logger",
        "-T",
        "-n",
        "127.0.0.1",
        "-P",
        str(port),
        *args,
        stdin=asyncio.subprocess.PIPE,
        env={**os.environ, "TZ": "UTC"},
    )
    await process.communicate("\n".join(lines).encode() + b"\n")
    assert process.returncode == 0


@pytest.mark.parametrize("octet_count", [False, True], ids=["newline", "octet-count"])
@pytest.mark.parametrize("rfc", ["--rfc3164", "--rfc5424"])
async def test_logger_over_tcp(
    spool: Spool, make_input: MakeInput, rfc: str, octet_count: bool
) -> None:
    tcp = await make_input()
    assert tcp.port
    framing = ["--octet-count"] if octet_count else []
    lines = [f"line {i} of {rfc}" for i in range(5)]
    await logger(tcp.port, lines, rfc, *framing, "-t", "tcpapp", "-p", "local4.err", "--id=77")
    events = await spooled(spool, 5)
    assert [e.message for e in events] == lines
    for event in events:
        assert (event.type, event.host, event.service, event.severity) == (
            "syslog",
            HOST,
            "tcpapp",
            SEV.SEVERITY_ERROR,
        )
        assert event.source == "site-a/syslog_tcp"
        attributes = event.attributes
        assert attributes["syslog.facility"] == "local4"
        assert attributes["syslog.format"] == rfc.removeprefix("--")
        assert attributes["syslog.pid"] == "77"
        assert attributes["net.src_ip"] == "127.0.0.1"
        assert int(attributes["net.src_port"]) > 0
        assert attributes["input.transport"] == "tcp"
        assert "input.truncated" not in attributes


async def test_python_syslog_handler_over_tcp(spool: Spool, make_input: MakeInput) -> None:
    tcp = await make_input()
    assert tcp.port
    port = tcp.port

    def emit() -> None:
        handler = logging.handlers.SysLogHandler(
            ("127.0.0.1", port),
            facility=logging.handlers.SysLogHandler.LOG_DAEMON,
            socktype=socket.SOCK_STREAM,
        )
        handler.ident = "pyapp[99]: "
        for i in range(3):
            record = logging.LogRecord("t", logging.ERROR, __file__, 1, "fail %d", (i,), None)
            handler.emit(record)
        handler.close()

    await asyncio.to_thread(emit)
    events = await spooled(spool, 3)
    assert [(e.service, e.message, e.severity) for e in events] == [
        ("pyapp", f"fail {i}", SEV.SEVERITY_ERROR) for i in range(3)
    ]
    assert {e.attributes["syslog.pid"] for e in events} == {"99"}
    assert {e.attributes["syslog.facility"] for e in events} == {"daemon"}


def client_context(pki: Pki, stem: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.directory / "ca.crt"))
    context.check_hostname = False
    if stem is not None:
        tls = pki.tls(stem)
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def tls_settings(pki: Pki, require_client_cert: bool) -> dict[str, Any]:
    server = pki.service("agent")
    return {
        "tls": {
            "enabled": True,
            "cert_file": str(server.cert_file),
            "key_file": str(server.key_file),
            "ca_file": str(server.ca_file),
            "require_client_cert": require_client_cert,
            "handshake_timeout_s": 2,
        }
    }


async def test_tls_client_sends_octet_counted_frames(
    pki: Pki, spool: Spool, make_input: MakeInput
) -> None:
    tls = await make_input("syslog_tls", **tls_settings(pki, require_client_cert=True))
    assert tls.port
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", tls.port, ssl=client_context(pki, "agent-site-a"), server_hostname="agent"
    )
    messages = [
        b'<165>1 2024-11-22T08:00:01.5Z edge01 secure 12 M1 [ex@32473 k="v"] multi\nline',
        b"<38>Nov 22 07:10:57 edge01 sshd[5]: Accepted key",
    ]
    writer.write(b"".join(b"%d %s" % (len(m), m) for m in messages))
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    first, second = await spooled(spool, 2)
    assert (first.host, first.service, first.message) == ("edge01", "secure", "multi\nline")
    assert first.attributes["sd.ex@32473.k"] == "v"
    assert (second.service, second.message) == ("sshd", "Accepted key")
    for event in (first, second):
        assert event.attributes["input.transport"] == "tls"
        assert event.source == "site-a/syslog_tls"


async def test_tls_refuses_clients_without_certificate(
    pki: Pki, spool: Spool, make_input: MakeInput
) -> None:
    tls = await make_input("syslog_tls", **tls_settings(pki, require_client_cert=True))
    assert tls.port
    before = metric(
        "edgebot_input_connection_errors_total", input="syslog_tls", reason="tls_handshake"
    )
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", tls.port, ssl=client_context(pki, None), server_hostname="agent"
    )
    answer = b""
    # TLS 1.3 tells the client about its refused certificate only when it next reads.
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        writer.write(b"<13>sneaky\n")
        await writer.drain()
        answer = await reader.read()
    writer.close()
    assert answer == b""
    await eventually(
        lambda: (
            metric(
                "edgebot_input_connection_errors_total", input="syslog_tls", reason="tls_handshake"
            )
            == before + 1
        ),
        what="a counted handshake failure",
    )
    assert spool.events == 0


async def test_garbage_and_oversize_do_not_disturb_another_connection(
    spool: Spool, make_input: MakeInput
) -> None:
    tcp = await make_input(max_message_bytes=200)
    assert tcp.port
    oversize_before = metric(
        "edgebot_input_framing_errors_total", input="syslog_tcp", reason="oversize"
    )
    _good_reader, good = await asyncio.open_connection("127.0.0.1", tcp.port)
    _bad_reader, bad = await asyncio.open_connection("127.0.0.1", tcp.port)
    await eventually(lambda: tcp.connections == 2, what="two connections")
    garbage = [
        b"\xff\xfe\x00\x01garbage\n",
        b"<999>bad pri\n",
        b"9999 <13>" + b"a" * 1000,  # counted frame far beyond the limit, then cut short
    ]
    for i in range(20):
        good.write(b"<13>Jan  2 03:04:05 host good[%d]: fine\n" % i)
        bad.write(garbage[i % len(garbage)])
        if i == 10:
            bad.write(b"<13>" + b"L" * 5000 + b"\n")  # an oversize line
        await good.drain()
        await bad.drain()
    for writer in (good, bad):
        writer.close()
        await writer.wait_closed()
    await eventually(lambda: tcp.connections == 0, what="both connections closed")

    events = await spooled(spool, 20)
    fine = [e for e in events if e.service == "good"]
    assert sorted(int(e.attributes["syslog.pid"]) for e in fine) == list(range(20))
    assert all(e.message == "fine" and "input.truncated" not in e.attributes for e in fine)
    others = [e for e in events if e.service != "good"]
    assert others, "the garbage connection's frames are kept too"
    assert all(len(e.raw) <= 200 for e in others)
    truncated = [e for e in others if e.attributes.get("input.truncated") == "true"]
    assert truncated
    assert (
        metric("edgebot_input_framing_errors_total", input="syslog_tcp", reason="oversize")
        - oversize_before
        >= 2
    )


async def test_connection_limit_and_idle_timeout(spool: Spool, make_input: MakeInput) -> None:
    tcp = await make_input(max_connections=1, idle_timeout_s=0.3)
    assert tcp.port
    refused = metric(
        "edgebot_input_connection_errors_total", input="syslog_tcp", reason="max_connections"
    )
    idle = metric(
        "edgebot_input_connection_errors_total", input="syslog_tcp", reason="idle_timeout"
    )
    first_reader, first = await asyncio.open_connection("127.0.0.1", tcp.port)
    await eventually(lambda: tcp.connections == 1, what="first connection")
    second_reader, second = await asyncio.open_connection("127.0.0.1", tcp.port)
    assert await asyncio.wait_for(second_reader.read(), 2) == b""  # closed at once
    first.write(b"<13>still here\n")
    await first.drain()
    # The idle connection is closed by the agent, and its last line was kept.
    assert await asyncio.wait_for(first_reader.read(), 3) == b""
    (event,) = await spooled(spool, 1)
    assert event.message == "still here"
    assert (
        metric(
            "edgebot_input_connection_errors_total", input="syslog_tcp", reason="max_connections"
        )
        == refused + 1
    )
    assert (
        metric("edgebot_input_connection_errors_total", input="syslog_tcp", reason="idle_timeout")
        == idle + 1
    )
    for writer in (first, second):
        writer.close()


async def test_full_spool_pauses_reading_and_drops_nothing(
    tmp_path: Path, make_input: MakeInput
) -> None:
    small = Spool(tmp_path / "small.db", 256 * 1024)
    await small.open()
    tcp = await make_input(target=small, blocked_poll_s=0.005)
    assert tcp.port
    dropped_before = metric("edgebot_spool_dropped_total", reason="spool_full")
    blocked_before = metric("edgebot_input_blocked_seconds_total", input="syslog_tcp")
    total = 3000
    payload = b"p" * 900
    _reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    writer.transport.set_write_buffer_limits(high=64 * 1024)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)

    async def send() -> None:
        for i in range(total):
            writer.write(b"<13>Jan  2 03:04:05 h app[%d]: %s\n" % (i, payload))
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    sender = asyncio.create_task(send())
    await eventually(
        lambda: metric("edgebot_input_blocked_seconds_total", input="syslog_tcp") > blocked_before,
        what="the input to block on the full spool",
    )
    spooled_while_full = small.events
    await asyncio.sleep(0.5)
    assert not sender.done(), "the sender should be held back by TCP flow control"
    assert small.events == spooled_while_full

    seen: list[int] = []
    async with asyncio.timeout(20):
        while len(seen) < total:
            batch = await small.form_batch(1000, 1 << 30)
            if batch is None:
                await asyncio.sleep(0.01)
                continue
            seen.extend(
                int(event_pb2.Event.FromString(d).attributes["syslog.pid"]) for d in batch.events
            )
            await small.ack(batch.batch_id)
    await asyncio.wait_for(sender, 10)
    assert sorted(seen) == list(range(total))
    assert metric("edgebot_spool_dropped_total", reason="spool_full") == dropped_before
    await tcp.stop()
    await small.close()


RSYSLOG_CONF = """
global(workDirectory="{work}")
module(load="imfile")
input(type="imfile" File="{source}" Tag="rsapp" Severity="warning" Facility="local2")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
       TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
       action.resumeInterval="1")
"""


async def test_rsyslog_forwards_a_file_octet_counted(
    tmp_path: Path, spool: Spool, make_input: MakeInput
) -> None:
    tcp = await make_input()  # the listener first, or rsyslog waits ~30 s to retry
    assert tcp.port
    source = tmp_path / "in.log"
    source.write_text("")
    (tmp_path / "work").mkdir()
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=tmp_path / "work", source=source, port=tcp.port))
    rsyslogd = await asyncio.create_subprocess_exec(
        "rsyslogd", "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        lines = [f'from rsyslog {i} with "quotes" and ]brackets[' for i in range(20)]
        with source.open("a") as out:
            out.write("".join(f"{line}\n" for line in lines))
        await eventually(lambda: spool.events >= len(lines), 15, "the lines via rsyslog")
    finally:
        rsyslogd.terminate()
        await rsyslogd.wait()
    events = await spooled(spool, len(lines))
    forwarded = [e for e in events if e.service == "rsapp"]
    assert [e.message for e in forwarded] == lines
    for event in forwarded:
        assert (event.type, event.host, event.severity) == ("syslog", HOST, SEV.SEVERITY_WARNING)
        assert event.attributes["syslog.facility"] == "local2"
        assert event.attributes["syslog.format"] == "rfc5424"
        assert event.attributes["input.transport"] == "tcp"
        assert "input.truncated" not in event.attributes


def test_tcp_config_defaults_and_errors(tmp_path: Path) -> None:
    config = load_config(AgentConfig, None, "agent", environ={})
    tcp, tls = config.inputs.syslog_tcp, config.inputs.syslog_tls
    assert (tcp.enabled, tcp.port, tcp.tls.enabled) == (False, 5514, False)
    assert (tls.enabled, tls.port, tls.tls.enabled) == (False, 6514, False)
    assert (tcp.max_message_bytes, tcp.max_connections, tcp.idle_timeout_s) == (65536, 256, 300)
    assert config.inputs.files == []

    bad = tmp_path / "edge.yaml"
    for body, key in [
        (
            "inputs:\n  syslog_tcp:\n    max_connections: 0\n",
            r"inputs\.syslog_tcp\.max_connections",
        ),
        ("inputs:\n  syslog_tcp:\n    timezone: Nowhere\n", r"inputs\.syslog_tcp\.timezone"),
        (
            "inputs:\n  syslog_tcp:\n    tls:\n      enabled: true\n",
            r"inputs\.syslog_tcp\.tls: .*cert_file: required",
        ),
        ("inputs:\n  syslog_tls:\n    enabled: true\n", r"syslog_tls\.tls\.enabled: must be true"),
    ]:
        bad.write_text(body)
        with pytest.raises(ConfigError, match=key):
            load_config(AgentConfig, bad, "agent", environ={})


async def test_stopping_while_blocked_counts_exactly_what_is_dropped(
    tmp_path: Path, make_input: MakeInput
) -> None:
    small = Spool(tmp_path / "small.db", 32 * 1024)
    await small.open()
    tcp = await make_input(target=small, blocked_poll_s=0.01)
    assert tcp.port
    received = metric("edgebot_messages_received_total", input="syslog_tcp")
    dropped = metric("edgebot_spool_dropped_total", reason="spool_full")
    blocked = metric("edgebot_input_blocked_seconds_total", input="syslog_tcp")
    _, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    writer.write(b"".join(b"<13>message %d %s\n" % (i, b"f" * 500) for i in range(500)))
    await eventually(
        lambda: metric("edgebot_input_blocked_seconds_total", input="syslog_tcp") > blocked,
        what="the input to block",
    )
    await tcp.stop()
    writer.close()
    received_delta = metric("edgebot_messages_received_total", input="syslog_tcp") - received
    dropped_delta = metric("edgebot_spool_dropped_total", reason="spool_full") - dropped
    assert received_delta > small.events > 0
    assert dropped_delta == received_delta - small.events
    await small.close()
