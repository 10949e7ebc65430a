"""The whole agent process in-process: syslog in over UDP, out over mTLS to ingest."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from edge_helpers import IngestDouble, IngestServer, agent_config, eventually, limits, ok
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import Pki

from edge_agent import AgentApp, AgentConfig, build
from edge_agent.inputs.netflow import NetflowInput
from edge_agent.inputs.syslog_udp import SyslogUdpInput
from mesh.app import running
from mesh.config import ConfigError, load_config
from mesh.tls import channel_credentials


async def test_syslog_reaches_ingest_and_health_serves(pki: Pki, tmp_path: Path) -> None:
    double = IngestDouble(limits(), ok)
    server = await IngestServer(pki, double).start()
    config = agent_config(
        pki,
        tmp_path,
        [server.address],
        inputs={"syslog_udp": {"host": "127.0.0.1", "port": 0}},
    )
    try:
        async with running(build(config)) as app:
            assert isinstance(app, AgentApp)
            udp = app.inputs["syslog_udp"]
            assert isinstance(udp, SyslogUdpInput)
            for i in range(3):
                process = await asyncio.create_subprocess_exec(
                    "logger", "-n", "127.0.0.1", "-P", str(udp.port), "-d", "-t", "app", f"n{i}"
                )
                assert await process.wait() == 0
            await eventually(lambda: len(double.store.counts) == 3, what="3 events at ingest")
            channel = grpc.aio.secure_channel(
                f"127.0.0.1:{app.runtime.ports.grpc}", channel_credentials(pki.operator())
            )
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await channel.close()
            plain = grpc.aio.insecure_channel(f"127.0.0.1:{app.runtime.ports.health}")
            reply = await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await plain.close()
        messages = sorted(e.message for b in double.batches for e in b.events)
        assert messages == ["n0", "n1", "n2"]
        assert {e.source for b in double.batches for e in b.events} == {"site-a/syslog_udp"}
    finally:
        await server.stop()


def test_config_defaults_and_errors(tmp_path: Path) -> None:
    config = load_config(AgentConfig, None, "agent", environ={})
    assert config.agent.id
    assert config.inputs.syslog_udp.port == 5514
    assert config.inputs.syslog_udp.max_message_bytes == 65535
    assert config.inputs.syslog_udp.timezone == "UTC"
    assert config.spool.path == Path("edgebot-spool.db")
    assert config.spool.max_bytes == 1 << 30
    assert config.shipper.ingest.addresses == ["127.0.0.1:50051"]
    assert (config.shipper.batch_max_events, config.shipper.batch_max_wait_s) == (500, 1.0)
    assert (config.shipper.backoff_initial_s, config.shipper.backoff_max_s) == (0.5, 30.0)
    assert config.shipper.max_in_flight == 4

    env = {"EDGEBOT_AGENT_AGENT__ID": "site-b", "EDGEBOT_AGENT_SPOOL__MAX_BYTES": "2048"}
    overridden = load_config(AgentConfig, None, "agent", environ=env)
    assert (overridden.agent.id, overridden.spool.max_bytes) == ("site-b", 2048)

    bad = tmp_path / "edge.yaml"
    bad.write_text("inputs:\n  syslog_udp:\n    timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError, match=r"inputs\.syslog_udp\.timezone"):
        load_config(AgentConfig, bad, "agent", environ={})
    bad.write_text("shipper:\n  ingest:\n    addresses: []\n")
    with pytest.raises(ConfigError, match=r"shipper\.ingest: .*at least one ingest address"):
        load_config(AgentConfig, bad, "agent", environ={})


async def test_polling_and_device_inputs_are_wired(pki: Pki, tmp_path: Path) -> None:
    double = IngestDouble(limits(), ok)
    server = await IngestServer(pki, double).start()
    config = agent_config(
        pki,
        tmp_path,
        [server.address],
        inputs={
            "syslog_udp": {"enabled": False},
            "netflow": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "snmp": [{"name": "r1", "host": "127.0.0.1", "get": [{"oid": "1.3.6.1.2.1.1.3.0"}]}],
            "nmea": [{"name": "boat", "source": "tcp://127.0.0.1:9"}],
            "http": [{"name": "weather", "url": "http://127.0.0.1:9/x", "interval_s": 600}],
        },
    )
    v5 = struct.pack("!HHIIIIBBH", 5, 1, 1000, 1_700_000_000, 0, 1, 0, 0, 0)
    v5 += struct.pack(
        "!4s4s4sHHIIIIHHBBBBHHBBH",
        bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes(4), 0, 0, 2, 120, 900, 990,
        5000, 53, 0, 0, 17, 0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    try:
        async with running(build(config)) as app:
            assert isinstance(app, AgentApp)
            assert list(app.inputs) == ["snmp:r1", "netflow", "nmea:boat", "http:weather"]
            assert [source.name for source in app.inputs.values()] == list(app.inputs)
            netflow = app.inputs["netflow"]
            assert isinstance(netflow, NetflowInput)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("127.0.0.1", netflow.port)
            )
            transport.sendto(v5)
            transport.close()
            await eventually(lambda: len(double.store.counts) == 1, what="the flow at ingest")
        (flow,) = [e for b in double.batches for e in b.events]
        assert flow.source == "site-a/netflow"
        assert flow.message == "udp 10.0.0.1:5000 -> 10.0.0.2:53 2 packets 120 bytes"
    finally:
        await server.stop()


async def udp_line(port: int | None, message: str) -> None:
    assert port is not None
    process = await asyncio.create_subprocess_exec(
        "logger", "-n", "127.0.0.1", "-P", str(port), "-d", "-t", "app", message
    )
    assert await process.wait() == 0


def messages(double: IngestDouble) -> list[str]:
    return sorted(e.message for b in double.batches for e in b.events)


async def test_reload_restarts_only_changed_inputs_and_keeps_the_stream(
    pki: Pki, tmp_path: Path
) -> None:
    double = IngestDouble(limits(), ok)
    server = await IngestServer(pki, double).start()
    log_file = tmp_path / "app.log"
    log_file.write_text("")
    udp_settings = {"host": "127.0.0.1", "port": 0}
    first = agent_config(pki, tmp_path, [server.address], inputs={"syslog_udp": udp_settings})
    try:
        async with running(build(first)) as app:
            assert isinstance(app, AgentApp)
            udp = app.inputs["syslog_udp"]
            assert isinstance(udp, SyslogUdpInput)
            await udp_line(udp.port, "before reload")
            await eventually(lambda: len(double.store.counts) == 1, what="the first line")

            files = [{"name": "app", "paths": [str(log_file)], "poll_interval_s": 0.05}]
            second = agent_config(
                pki, tmp_path, [server.address],
                inputs={"syslog_udp": udp_settings, "files": files},
                spool={"max_bytes": 1 << 20}, shipper={"batch_max_events": 50},
            )  # fmt: skip
            await app.reload(second)

            assert app.inputs["syslog_udp"] is udp, "an unchanged input keeps running"
            assert list(app.inputs) == ["syslog_udp", "file:app"]
            assert app.spool.max_bytes == 1 << 20
            with log_file.open("a") as writer:
                writer.write("from the new file input\n")
            await udp_line(udp.port, "after reload")
            await eventually(lambda: len(double.store.counts) == 3, what="both new lines")
            assert len(double.hellos) == 1, "the ingest stream was not dropped"

            moved = second.model_copy(
                update={
                    "agent": second.agent.model_copy(update={"id": "site-b"}),
                    "spool": second.spool.model_copy(update={"path": tmp_path / "elsewhere.db"}),
                }
            )
            with pytest.raises(ConfigError, match=r"agent, spool.path: cannot change"):
                await app.reload(moved)
            assert app.config is second
            assert list(app.inputs) == ["syslog_udp", "file:app"]

            third = agent_config(
                pki, tmp_path, [server.address], inputs={"syslog_udp": udp_settings}
            )
            await app.reload(third)
            assert list(app.inputs) == ["syslog_udp"]
    finally:
        await server.stop()
    assert messages(double) == ["after reload", "before reload", "from the new file input"]


def test_an_agent_without_polling_inputs_does_not_load_their_libraries(
    pki: Pki, tmp_path: Path
) -> None:
    # Idle RSS is a target (< 80 MB): SNMP, HTTP, serial, certificate-making and OTLP
    # libraries are loaded only by agents that use them.
    config = agent_config(pki, tmp_path, ["127.0.0.1:1"], inputs={"syslog_udp": {"port": 0}})
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge_agent import build\n"
        "from edge_agent.config import AgentConfig\n"
        "from mesh.config import load_config\n"
        f"build(load_config(AgentConfig, Path({str(config_file)!r}), 'agent', environ={{}}))\n"
        "heavy = ('pysnmp', 'httpx', 'serial', 'serial_asyncio', 'cryptography',\n"
        "         'opentelemetry.exporter')\n"
        "print(sorted({m for m in sys.modules if m.startswith(heavy)}))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout
