"""An anomaly service wired to a real in-process storage service over mTLS gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inprocess_mesh import storage_app
from support import Pki, make_config, secure_channel

from anomaly_svc import AnomalyApp, AnomalyServiceConfig, build
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, event_pb2, storage_pb2, storage_pb2_grpc
from mesh.app import App, running
from mesh.timeutil import NS_PER_S, now_ns, ns_to_ts

ALL_TIME = {"start_time": ns_to_ts(NS_PER_S), "end_time": ns_to_ts(now_ns() + 86_400 * NS_PER_S)}


@dataclass
class Mesh:
    storage: App
    anomaly: AnomalyApp
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub
    writer: storage_pb2_grpc.StorageServiceAsyncStub
    config: AnomalyServiceConfig

    @property
    def models(self) -> Path:
        return self.config.models.dir

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.anomaly.runtime.ports.grpc}"

    async def write(self, events: Sequence[event_pb2.Event], batch_id: str = "") -> None:
        batch = event_pb2.EventBatch(
            batch_id=batch_id or f"b-{events[0].id}", agent_id="site-a", events=events
        )
        await self.writer.Write(storage_pb2.WriteRequest(batch=batch))

    async def run(self, *agents: str) -> dict[str, anomaly_pb2.AnalysisResult]:
        reply = await self.stub.RunAnalysis(
            anomaly_pb2.RunAnalysisRequest(agents=agents, **ALL_TIME)
        )
        return {r.agent: r for r in reply.results}

    async def anomalies(self, agent: str) -> list[anomaly_pb2.Anomaly]:
        reply = await self.stub.ListAnomalies(
            anomaly_pb2.ListAnomaliesRequest(agents=[agent], page_size=500)
        )
        return list(reply.anomalies)


def anomaly_config(
    pki: Pki, tmp_path: Path, storage_port: int, **sections: Any
) -> AnomalyServiceConfig:
    defaults: dict[str, Any] = {
        "store": {"path": str(tmp_path / "anomalies.db")},
        "storage": {"addresses": [f"127.0.0.1:{storage_port}"], "timeout_s": 2},
        "models": {"dir": str(tmp_path / "models"), "poll_interval_s": 0.1},
        "cache": {"ttl_s": 0},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(defaults.get(name), dict):
            defaults[name] = defaults[name] | value
        else:
            defaults[name] = value
    return make_config(AnomalyServiceConfig, pki, "anomaly", **defaults)


@asynccontextmanager
async def mesh(pki: Pki, tmp_path: Path, **sections: Any) -> AsyncIterator[Mesh]:
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    async with running(storage_app(pki, tmp_path)) as storage:
        config = anomaly_config(pki, tmp_path, storage.runtime.ports.grpc, **sections)
        async with running(build(config)) as anomaly:
            assert isinstance(anomaly, AnomalyApp)
            async with (
                secure_channel(anomaly.runtime.ports.grpc, pki.operator()) as operator,
                secure_channel(storage.runtime.ports.grpc, pki.service("ingest")) as writer,
            ):
                yield Mesh(
                    storage, anomaly, anomaly_pb2_grpc.AnomalyServiceStub(operator),
                    storage_pb2_grpc.StorageServiceStub(writer), config,
                )  # fmt: skip
