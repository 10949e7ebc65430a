"""`python -m edge_agent --config` with TCP syslog and a log file: killed with SIGKILL while a
file is being written, restarted, and every line reaches ingest exactly once."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from edge_helpers import IngestDouble, IngestServer, agent_config, eventually, limits, ok
from support import Pki

from gen.edgebot.v1 import event_pb2


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start_agent(
    config_path: Path, log_path: Path, command: tuple[str, ...] = ("-m", "edge_agent")
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *command, "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def tail_of(log_path: Path) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])


async def wait_listening(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    async def accepting() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    async with asyncio.timeout(30):
        while not await accepting():
            assert process.poll() is None, tail_of(log_path)
            await asyncio.sleep(0.1)


def stored(double: IngestDouble) -> list[event_pb2.Event]:
    """Events of every batch storage committed, each batch once (as its ledger keeps it)."""
    batches = {b.batch_id: b for b in double.batches if b.batch_id in double.store.ledger}
    return [event for batch in batches.values() for event in batch.events]


async def test_agent_process_survives_sigkill_without_loss_or_duplicates(
    pki: Pki, tmp_path: Path
) -> None:
    double = IngestDouble(limits(), ok)
    server = await IngestServer(pki, double).start()
    tcp_port = free_tcp_port()
    log_file = tmp_path / "app.log"
    config = agent_config(
        pki,
        tmp_path,
        [server.address],
        inputs={
            "syslog_udp": {"enabled": False},
            "syslog_tcp": {"enabled": True, "host": "127.0.0.1", "port": tcp_port},
            "files": [{"name": "app", "paths": [str(log_file)], "poll_interval_s": 0.05}],
        },
    )
    config_path = tmp_path / "edge.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    agent_log = tmp_path / "agent.log"
    agent = start_agent(config_path, agent_log)
    try:
        await wait_listening(tcp_port, agent, agent_log)
        logger = await asyncio.create_subprocess_exec(
            "logger", "-T", "-n", "127.0.0.1", "-P", str(tcp_port), "-t", "tcpapp", "over tcp"
        )
        assert await logger.wait() == 0
        with log_file.open("ab", buffering=0) as writer:
            for block in range(40):
                writer.write(
                    b"".join(b"line %06d\n" % n for n in range(block * 50, block * 50 + 50))
                )
                await asyncio.sleep(0.01)
                if block == 20:
                    # Some lines made it through the spool to ingest: the restarted agent
                    # must resume from its checkpoint, not from the start.
                    await eventually(
                        lambda: any(e.type == "file" for e in stored(double)), within=10
                    )
                    agent.send_signal(signal.SIGKILL)
                    assert agent.wait(timeout=10) == -signal.SIGKILL
                    agent = start_agent(config_path, agent_log)
            await wait_listening(tcp_port, agent, agent_log)

        await eventually(
            lambda: sum(e.source == "site-a/file:app" for e in stored(double)) >= 2000,
            within=30,
            what="2000 file lines at ingest",
        )
        await asyncio.sleep(0.3)
        events = stored(double)
        lines = collections.Counter(
            int(e.message.removeprefix("line ")) for e in events if e.type == "file"
        )
        assert sorted(lines) == list(range(2000))
        assert set(lines.values()) == {1}
        (tcp,) = [e for e in events if e.source == "site-a/syslog_tcp"]
        assert (tcp.service, tcp.message, tcp.attributes["input.transport"]) == (
            "tcpapp",
            "over tcp",
            "tcp",
        )
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        await server.stop()


def test_agent_refuses_tls_listener_without_certificate(tmp_path: Path) -> None:
    config_path = tmp_path / "edge.yaml"
    config_path.write_text(
        "inputs:\n  syslog_tls:\n    enabled: true\n    tls:\n      enabled: true\n"
        f"      cert_file: {tmp_path / 'missing.crt'}\n      key_file: {tmp_path / 'x.key'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "inputs.syslog_tls.tls: Value error, cert_file: file not found" in result.stderr


async def test_sighup_reloads_the_agent_and_refuses_a_bad_config(pki: Pki, tmp_path: Path) -> None:
    double = IngestDouble(limits(), ok)
    server = await IngestServer(pki, double).start()
    tcp_port = free_tcp_port()
    log_file = tmp_path / "app.log"
    log_file.write_text("")
    tcp = {"enabled": True, "host": "127.0.0.1", "port": tcp_port}
    config = agent_config(
        pki,
        tmp_path,
        [server.address],
        inputs={"syslog_udp": {"enabled": False}, "syslog_tcp": tcp},
    )
    config_path = tmp_path / "edge.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    agent_log = tmp_path / "agent.log"
    agent = start_agent(config_path, agent_log)
    try:
        await wait_listening(tcp_port, agent, agent_log)
        files = [{"name": "app", "paths": [str(log_file)], "poll_interval_s": 0.05}]
        grown = config.model_dump(mode="json")
        grown["inputs"]["files"] = files
        config_path.write_text(yaml.safe_dump(grown))
        agent.send_signal(signal.SIGHUP)
        await eventually(lambda: "edge agent reloaded" in agent_log.read_text(), within=10)
        with log_file.open("a") as writer:
            writer.write("seen after SIGHUP\n")
        await eventually(
            lambda: [e.message for e in stored(double)] == ["seen after SIGHUP"], within=10
        )

        config_path.write_text("spool:\n  max_bytes: lots\n")
        agent.send_signal(signal.SIGHUP)
        await eventually(lambda: "new configuration refused" in agent_log.read_text(), within=10)
        assert "spool.max_bytes" in agent_log.read_text()
        with log_file.open("a") as writer:
            writer.write("still running\n")
        await eventually(lambda: len(stored(double)) == 2, within=10, what="the file input")
        assert agent.poll() is None
        assert len(double.hellos) == 1, "reloads kept the ingest stream"
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        await server.stop()


async def test_edgebot_agent_runs_the_agent_and_refuses_a_bad_config(
    pki: Pki, tmp_path: Path
) -> None:
    double = IngestDouble(limits(), ok)
    server = await IngestServer(pki, double).start()
    tcp_port = free_tcp_port()
    tcp = {"enabled": True, "host": "127.0.0.1", "port": tcp_port}
    config = agent_config(
        pki,
        tmp_path,
        [server.address],
        inputs={"syslog_udp": {"enabled": False}, "syslog_tcp": tcp},
    )
    config_path = tmp_path / "edge.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    log_path = tmp_path / "agent.log"
    agent = start_agent(config_path, log_path, ("-m", "edgebot", "agent"))
    try:
        await wait_listening(tcp_port, agent, log_path)
        logger = await asyncio.create_subprocess_exec(
            "logger", "-T", "-n", "127.0.0.1", "-P", str(tcp_port), "-t", "cli", "via edgebot agent"
        )
        assert await logger.wait() == 0
        await eventually(lambda: [e.message for e in stored(double)] == ["via edgebot agent"])
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, tail_of(log_path)
        await server.stop()

    config_path.write_text("spool:\n  max_bytes: lots\n")
    refused = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edgebot", "agent", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "spool.max_bytes" in refused.stderr
