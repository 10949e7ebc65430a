"""The UDP syslog input with real senders: util-linux logger and Python's SysLogHandler."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edge_helpers import eventually
from prometheus_client import REGISTRY

from edge_agent.config import SyslogUdpConfig
from edge_agent.inputs.syslog_udp import SyslogUdpInput
from edge_agent.metrics import SourceTally
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import NS_PER_S, ts_to_ns

SEV = event_pb2.Severity


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path / "spool.db", 1 << 30)
    await spool.open()
    yield spool
    await spool.close()


@pytest.fixture
async def udp_input(spool: Spool) -> AsyncIterator[SyslogUdpInput]:
    config = SyslogUdpConfig(host="127.0.0.1", port=0, flush_interval_s=0.01)
    udp = SyslogUdpInput(config, spool, "site-a")
    await udp.start()
    yield udp
    await udp.stop()


async def logger(port: int, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "logger", "-n", "127.0.0.1", "-P", str(port), "-d", *args, env={**os.environ, "TZ": "UTC"}
    )
    assert await process.wait() == 0


async def spooled(spool: Spool, count: int) -> list[event_pb2.Event]:
    await eventually(lambda: spool.events >= count, 5, f"{count} spooled events")
    batch = await spool.form_batch(1000, 1 << 24)
    assert batch is not None
    return [event_pb2.Event.FromString(data) for data in batch.events]


def assert_recent(event: event_pb2.Event) -> None:
    """The source time was stamped by the sender just before the agent received it."""
    assert 0 <= ts_to_ns(event.observed_time) - ts_to_ns(event.time) < 2 * NS_PER_S


async def test_logger_rfc3164(spool: Spool, udp_input: SyslogUdpInput) -> None:
    assert udp_input.port
    await logger(udp_input.port, "--rfc3164", "-t", "myapp", "-p", "local0.warning", "hello")
    (event,) = await spooled(spool, 1)
    assert (event.type, event.host, event.service, event.severity, event.message) == (
        "syslog",
        os.uname().nodename,
        "myapp",
        SEV.SEVERITY_WARNING,
        "hello",
    )
    assert event.source == "site-a/syslog_udp"
    assert event.attributes["syslog.facility"] == "local0"
    assert event.attributes["syslog.format"] == "rfc3164"
    assert event.attributes["net.src_ip"] == "127.0.0.1"
    assert_recent(event)
    assert event.time.nanos == 0


async def test_logger_rfc5424(spool: Spool, udp_input: SyslogUdpInput) -> None:
    assert udp_input.port
    await logger(
        udp_input.port,
        "--rfc5424",
        "-t",
        "myapp",
        "-p",
        "daemon.err",
        "--id=4242",
        "--msgid",
        "MID7",
        "--sd-id",
        "test@32473",
        "--sd-param",
        'color="blue"',
        "hello five four two four",
    )
    (event,) = await spooled(spool, 1)
    assert (event.host, event.service, event.severity, event.message) == (
        os.uname().nodename,
        "myapp",
        SEV.SEVERITY_ERROR,
        "hello five four two four",
    )
    attributes = event.attributes
    assert attributes["syslog.facility"] == "daemon"
    assert attributes["syslog.format"] == "rfc5424"
    assert attributes["syslog.procid"] == "4242"
    assert attributes["syslog.msgid"] == "MID7"
    assert attributes["sd.test@32473.color"] == "blue"
    assert attributes["sd.timeQuality.tzKnown"] == "1"
    assert_recent(event)


async def test_python_syslog_handler(spool: Spool, udp_input: SyslogUdpInput) -> None:
    assert udp_input.port
    handler = logging.handlers.SysLogHandler(
        ("127.0.0.1", udp_input.port), facility=logging.handlers.SysLogHandler.LOG_LOCAL3
    )
    handler.ident = "pyapp: "
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "disk %s full", ("sda",), None)
    handler.emit(record)
    handler.close()
    (event,) = await spooled(spool, 1)
    assert (event.host, event.service, event.severity, event.message) == (
        "127.0.0.1",
        "pyapp",
        SEV.SEVERITY_WARNING,
        "disk sda full",
    )
    assert event.attributes["syslog.facility"] == "local3"
    assert ts_to_ns(event.time) == ts_to_ns(event.observed_time)


async def test_many_datagrams_and_garbage_are_all_kept(
    spool: Spool, udp_input: SyslogUdpInput
) -> None:
    assert udp_input.port
    received_before = REGISTRY.get_sample_value(
        "edgebot_messages_received_total", {"input": "syslog_udp"}
    )
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", udp_input.port)
    )
    for i in range(300):
        transport.sendto(f"<14>Jan  2 03:04:05 host app[{i}]: line {i}".encode())
        if i % 50 == 0:
            await asyncio.sleep(0.005)
    transport.sendto(b"<999>not syslog")
    transport.close()

    events = await spooled(spool, 301)
    assert sorted(e.attributes["syslog.pid"] for e in events if e.type == "syslog") == sorted(
        str(i) for i in range(300)
    )
    (raw,) = [e for e in events if e.type == "raw"]
    assert "PRI 999" in raw.attributes["parse.error"]
    received_after = REGISTRY.get_sample_value(
        "edgebot_messages_received_total", {"input": "syslog_udp"}
    )
    assert (received_after or 0) - (received_before or 0) == 301


async def test_oversized_datagram_is_truncated_and_marked(spool: Spool) -> None:
    config = SyslogUdpConfig(host="127.0.0.1", port=0, max_message_bytes=100)
    udp = SyslogUdpInput(config, spool, "site-a")
    await udp.start()
    assert udp.port
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", udp.port)
    )
    transport.sendto(b"<13>Jan  2 03:04:05 host app: " + b"z" * 500)
    transport.close()
    (event,) = await spooled(spool, 1)
    await udp.stop()
    assert len(event.raw) == 100
    assert event.attributes["input.truncated"] == "true"


def source_count(input_name: str, source: str) -> float:
    sample = REGISTRY.get_sample_value(
        "edgebot_input_source_messages_total", {"input": input_name, "source": source}
    )
    return sample or 0.0


async def test_messages_are_counted_per_sender(udp_input: SyslogUdpInput, spool: Spool) -> None:
    assert udp_input.port is not None
    before = source_count("syslog_udp", "127.0.0.1")
    for i in range(3):
        await logger(udp_input.port, "--rfc3164", "-t", "rate", f"line {i}")
    await spooled(spool, 3)
    assert source_count("syslog_udp", "127.0.0.1") - before == 3


def test_sender_labels_are_bounded() -> None:
    tally = SourceTally("bounded_test", max_sources=2)
    for sender in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.1"]:
        tally.count(sender)
    assert source_count("bounded_test", "10.0.0.1") == 2
    assert source_count("bounded_test", "10.0.0.2") == 1
    assert source_count("bounded_test", "10.0.0.3") == 0
    assert source_count("bounded_test", "other") == 2
