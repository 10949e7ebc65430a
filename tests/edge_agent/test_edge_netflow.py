"""NetFlow v5, v9 and IPFIX: softflowd exporting a pcap made here, and the decoder alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edge_peers import Drain, require_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from edge_agent import AgentConfig
from edge_agent.config_polling import NetflowConfig
from edge_agent.inputs.netflow import NetflowInput
from edge_agent.parsers.netflow import Decoded, TemplateCache, decode_datagram, flow_event
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError, load_config
from mesh.timeutil import NS_PER_S

# (src, dst, protocol, sport, dport) -> (packets, IP bytes) of the flows in the pcap.
FLOWS = {
    ("10.0.0.1", "10.0.0.2", "6", "12345", "80"): (3, 40 + 140 + 240),
    ("10.0.0.3", "10.0.0.4", "17", "5353", "53"): (2, 2 * 78),
    ("192.168.7.9", "172.16.0.1", "6", "40000", "443"): (4, 4 * 1040),
}


def packet(src: str, dst: str, transport: object, payload: bytes) -> object:
    return Ether() / IP(src=src, dst=dst) / transport / Raw(payload)


def write_pcap(path: Path) -> None:
    start = time.time() - 5
    packets = [
        packet("10.0.0.1", "10.0.0.2", TCP(sport=12345, dport=80, flags="S"), b""),
        packet("10.0.0.1", "10.0.0.2", TCP(sport=12345, dport=80, flags="PA"), b"x" * 100),
        packet("10.0.0.1", "10.0.0.2", TCP(sport=12345, dport=80, flags="PA"), b"x" * 200),
        *(packet("10.0.0.3", "10.0.0.4", UDP(sport=5353, dport=53), b"y" * 50) for _ in range(2)),
        *(
            packet("192.168.7.9", "172.16.0.1", TCP(sport=40000, dport=443, flags="A"), b"z" * 1000)
            for _ in range(4)
        ),
    ]
    for index, frame in enumerate(packets):
        frame.time = start + index * 0.05  # type: ignore[attr-defined]
    wrpcap(str(path), packets)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path / "spool.db", 1 << 30)
    await spool.open()
    yield spool
    await spool.close()


@pytest.fixture
async def collector(spool: Spool) -> AsyncIterator[NetflowInput]:
    config = NetflowConfig(enabled=True, host="127.0.0.1", port=0, flush_interval_s=0.01)
    netflow = NetflowInput(config, spool, "site-a")
    await netflow.start()
    yield netflow
    await netflow.stop()


def five_tuple(event: event_pb2.Event) -> tuple[str, ...]:
    keys = ("net.src_ip", "net.dst_ip", "net.protocol", "net.src_port", "net.dst_port")
    return tuple(event.attributes[key] for key in keys)


def iso_ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * NS_PER_S)


@pytest.mark.parametrize("version", [5, 9, 10])
async def test_softflowd_flows_arrive_with_their_tuples_and_counts(
    version: int, tmp_path: Path, spool: Spool, collector: NetflowInput
) -> None:
    softflowd = require_peer("softflowd", "softflowd")
    trace = tmp_path / "trace.pcap"
    write_pcap(trace)
    process = await asyncio.create_subprocess_exec(
        softflowd, "-d", "-r", str(trace), "-n", f"127.0.0.1:{collector.port}",
        "-v", str(version), "-c", "none", "-p", str(tmp_path / "sf.pid"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, output.decode()

    events = await Drain(spool).count(len(FLOWS))
    await asyncio.sleep(0.1)
    assert spool.events == 0  # nothing else arrived: no raw events
    assert {five_tuple(e): (int(e.attributes["net.packets"]), int(e.attributes["net.bytes"]))
            for e in events} == FLOWS  # fmt: skip
    for event in events:
        assert (event.type, event.host, event.service) == ("netflow", "127.0.0.1", "netflow")
        assert event.source == "site-a/netflow"
        assert event.attributes["netflow.version"] == str(version)
        assert event.attributes["netflow.exporter"] == "127.0.0.1"
        assert event.severity == event_pb2.SEVERITY_INFORMATIONAL
        # Exporter clocks in pcap mode are off (PEERS.md): check the flow's duration only.
        duration = iso_ns(event.attributes["flow.end"]) - iso_ns(event.attributes["flow.start"])
        assert 0 <= duration <= 1 * NS_PER_S
    tcp = next(e for e in events if e.attributes["net.dst_port"] == "80")
    assert int(tcp.attributes["net.tcp_flags"]) == 0x02 | 0x08 | 0x10  # SYN, PSH, ACK
    assert tcp.attributes["net.transport"] == "tcp"
    assert tcp.message == "tcp 10.0.0.1:12345 -> 10.0.0.2:80 3 packets 420 bytes"
    if version != 5:
        templates = REGISTRY.get_sample_value("edgebot_netflow_templates")
        assert templates is not None
        assert templates >= 1


# Hand-built v9 / IPFIX datagrams --------------------------------------------------------

V9_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (6, 1), (22, 4), (21, 4)]


def v9_header(count: int, uptime_ms: int = 100_000, secs: int = 1_700_000_000) -> bytes:
    return struct.pack("!HHIIII", 9, count, uptime_ms, secs, 1, 7)


def v9_template(template_id: int = 300) -> bytes:
    body = struct.pack("!HH", template_id, len(V9_FIELDS))
    body += b"".join(struct.pack("!HH", *field) for field in V9_FIELDS)
    return struct.pack("!HH", 0, 4 + len(body)) + body


def v9_record(src_port: int, octets: int) -> bytes:
    return (
        bytes([10, 1, 1, 1, 10, 2, 2, 2])
        + struct.pack("!HHBIIB", src_port, 443, 6, octets, 3, 0x18)
        + struct.pack("!II", 90_000, 99_000)
    )


def v9_data(records: list[bytes], template_id: int = 300) -> bytes:
    body = b"".join(records)
    padding = b"\0" * (-len(body) % 4)
    return struct.pack("!HH", template_id, 4 + len(body) + len(padding)) + body + padding


def v9_options_template() -> bytes:
    # template 400: one scope field (system, 4 bytes), one option field (sampling interval)
    body = struct.pack("!HHHHHHH", 400, 4, 4, 1, 4, 34, 4)
    return struct.pack("!HH", 1, 4 + len(body)) + body


def cache(hold_s: float = 10.0) -> TemplateCache:
    return TemplateCache(timeout_s=60, max_templates=16, hold_s=hold_s, max_held_sets=4)


def decode(data: bytes, templates: TemplateCache, now: int = 0) -> Decoded:
    return decode_datagram(data, "192.0.2.1", templates, now, max_records=100)


def test_v9_template_then_data_with_padding_and_times() -> None:
    templates = cache()
    packet = v9_header(2) + v9_template() + v9_data([v9_record(1000, 500), v9_record(1001, 60)])
    result = decode(packet, templates)
    assert result.error is None
    assert [r.attributes["net.src_port"] for r in result.records] == ["1000", "1001"]
    record = result.records[0]
    assert record.attributes["net.bytes"] == "500"
    assert record.attributes["net.tcp_flags"] == str(0x18)
    # uptime 100 s at export time 1_700_000_000: first switched 10 s before export.
    assert record.start_ns == (1_700_000_000 - 10) * NS_PER_S
    assert record.end_ns == (1_700_000_000 - 1) * NS_PER_S
    event = flow_event(record, "a/netflow", 5)
    assert event.time.ToNanoseconds() == record.end_ns
    assert event.attributes["netflow.source_id"] == "7"


def test_data_before_its_template_is_held_then_decoded() -> None:
    templates = cache()
    early = decode(v9_header(1) + v9_data([v9_record(2000, 1)]), templates, now=0)
    assert early.records == []
    assert early.error is None
    later = decode(v9_header(1) + v9_template(), templates, now=NS_PER_S)
    assert [r.attributes["net.src_port"] for r in later.records] == ["2000"]


def test_held_data_expires_counted_and_templates_time_out() -> None:
    templates = cache(hold_s=1.0)
    decode(v9_header(1) + v9_data([v9_record(2000, 1)]), templates, now=0)
    expired = decode(v9_header(1) + v9_template(), templates, now=5 * NS_PER_S)
    assert expired.skipped["no_template"] == 1
    assert expired.records == []
    stale = decode(v9_header(1) + v9_data([v9_record(1, 1)]), templates, now=120 * NS_PER_S)
    assert stale.records == []  # template older than timeout_s: forgotten, data held


def test_options_templates_and_their_data_are_skipped_safely() -> None:
    templates = cache()
    options_data = struct.pack("!HHII", 400, 12, 1, 100)
    result = decode(v9_header(3) + v9_options_template() + options_data + v9_template(), templates)
    assert result.error is None
    assert result.records == []
    assert result.skipped["options_data"] == 1


def test_ipfix_variable_length_enterprise_fields_and_withdrawal() -> None:
    templates = cache()
    fields = struct.pack("!HHHHHH", 8, 4, 12, 4, 1, 8) + struct.pack("!HHI", 0x8000 | 5, 65535, 9)
    template_set = struct.pack("!HHHH", 2, 8 + len(fields), 500, 4) + fields
    record = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + (1234).to_bytes(8, "big") + b"\x03abc"
    data_set = struct.pack("!HH", 500, 4 + len(record)) + record
    body = template_set + data_set
    message = struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, 1, 3) + body
    result = decode(message, templates)
    assert result.error is None
    (flow,) = result.records
    assert flow.attributes["net.bytes"] == "1234"
    assert flow.attributes["netflow.field.9.5"] == b"abc".hex()
    withdrawal = struct.pack("!HHHH", 2, 8, 500, 0)
    decode(struct.pack("!HHIII", 10, 24, 1_700_000_000, 2, 3) + withdrawal, templates)
    again = decode(message[:16] + data_set, templates)
    assert again.records == []


def test_v5_truncated_and_garbage_become_errors_not_exceptions() -> None:
    header = struct.pack("!HHIIIIBBH", 5, 2, 1000, 1_700_000_000, 0, 1, 0, 0, 0)
    record = struct.pack(
        "!4s4s4sHHIIIIHHBBBBHHBBH",
        bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8]), bytes(4), 1, 2, 10, 1000, 500, 900,
        111, 222, 0, 2, 6, 0, 0, 0, 24, 24, 0,
    )  # fmt: skip
    result = decode(header + record, cache())
    assert result.error is not None
    assert "announces 2 records" in result.error
    assert result.records[0].attributes["net.dst_port"] == "222"
    assert decode(b"\x00\x07garbage", cache()).error == "unsupported NetFlow version 7"
    assert decode(b"", cache()).error is not None


async def test_undecodable_datagram_is_kept_as_raw(spool: Spool, collector: NetflowInput) -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", collector.port)
    )
    transport.sendto(b"\x00\x09short")
    transport.close()
    (event,) = await Drain(spool).count(1)
    assert event.type == "raw"
    assert event.attributes["parse.error"] == "v9 header truncated"
    assert event.raw == b"\x00\x09short"


VALID = [
    v9_header(2) + v9_template() + v9_data([v9_record(1, 2)]) + v9_options_template(),
    struct.pack("!HHIIIIBBH", 5, 1, 1000, 1_700_000_000, 0, 1, 0, 0, 0) + bytes(48),
    struct.pack("!HHIII", 10, 16, 1, 1, 1),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(VALID),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 300),
    noise=st.binary(max_size=200),
)
def test_fuzz_mangled_and_random_datagrams_never_raise(
    base: bytes, edits: list[tuple[int, int]], cut: int, noise: bytes
) -> None:
    templates = cache()
    decode(VALID[0], templates)
    mangled = bytearray(base)
    for position, value in edits:
        if position < len(mangled):
            mangled[position] = value
    for data in (bytes(mangled[:cut]), bytes(mangled), noise, base[:2] + noise):
        result = decode(data, templates)
        if len(data) < 2 or int.from_bytes(data[:2], "big") not in (5, 9, 10):
            assert result.error is not None  # becomes a raw event
        for record in result.records:
            flow_event(record, "fuzz/netflow", 1)


def test_netflow_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "edge.yaml"
    for body, key in [
        ("inputs:\n  netflow: {port: 70000}\n", r"inputs\.netflow\.port"),
        ("inputs:\n  netflow: {template_timeout_s: 0}\n", r"inputs\.netflow\.template_timeout_s"),
        ("inputs:\n  netflow: {colour: red}\n", r"inputs\.netflow\.colour"),
    ]:
        bad.write_text(body)
        with pytest.raises(ConfigError, match=key):
            load_config(AgentConfig, bad, "agent", environ={})
    assert load_config(AgentConfig, None, "agent", environ={}).inputs.netflow.port == 2055
