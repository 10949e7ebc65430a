"""SIGHUP: the pipeline process re-reads its config; a bad one is refused and the old stays."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import Pki, eventually_async, free_port_base, secure_channel

from gen.edgebot.v1 import pipeline_pb2, pipeline_pb2_grpc


def write_config(path: Path, pki: Pki, port: int, processors: list[dict[str, Any]]) -> None:
    config = {
        "server": {"port": port, "health_port": None, "metrics_port": None},
        "tls": pki.service("pipeline").model_dump(mode="json"),
        "logging": {"format": "json"},
        "pipeline": {"processors": processors},
    }
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.yaml"


@pytest.fixture
def pipeline_process(
    pki: Pki, config_path: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port_base(offsets=(0,))
    write_config(config_path, pki, port, [{"type": "severity_map"}])
    log_path = tmp_path / "pipeline.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline_svc", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process, port, log_path
    finally:
        process.terminate()
        process.wait(timeout=20)


async def processor_names(port: int, pki: Pki) -> list[str]:
    async with secure_channel(port, pki.operator()) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        reply = await stub.DescribePipeline(pipeline_pb2.DescribePipelineRequest(), timeout=5)
    return [p.name for p in reply.processors]


async def serving(port: int, pki: Pki) -> bool:
    async with secure_channel(port, pki.operator()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except Exception:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_sighup_applies_a_valid_config_and_refuses_a_bad_one(
    pipeline_process: tuple[subprocess.Popen[bytes], int, Path], pki: Pki, config_path: Path
) -> None:
    process, port, log_path = pipeline_process
    await eventually_async(lambda: serving(port, pki), timeout_s=30, what="pipeline serving")
    assert await processor_names(port, pki) == ["severity_map"]

    write_config(
        config_path, pki, port, [{"type": "timestamp_normalize"}, {"type": "severity_map"}]
    )
    process.send_signal(signal.SIGHUP)
    await eventually_async(
        lambda: _names_are(port, pki, ["timestamp_normalize", "severity_map"]),
        what="the new processors",
    )

    write_config(config_path, pki, port, [{"type": "no_such_processor"}])
    process.send_signal(signal.SIGHUP)
    await eventually_async(
        lambda: _log_contains(log_path, "new configuration refused"), what="the refusal"
    )
    assert await processor_names(port, pki) == ["timestamp_normalize", "severity_map"]
    assert "pipeline.processors.0.type: unknown processor" in await asyncio.to_thread(
        log_path.read_text
    )
    assert process.poll() is None


async def _names_are(port: int, pki: Pki, names: list[str]) -> bool:
    return await processor_names(port, pki) == names


async def _log_contains(path: Path, text: str) -> bool:
    return text in await asyncio.to_thread(path.read_text)
