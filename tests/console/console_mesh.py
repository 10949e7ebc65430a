"""A live mesh for the console tests: edge agent -> ingest -> pipeline -> storage, and the
anomaly service with its console, all in this process on free ports, over mTLS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console_samples import CROWDSEC
from support import Pki, make_config, secure_channel

from anomaly_svc import AnomalyApp, AnomalyServiceConfig
from anomaly_svc import build as build_anomaly
from edge_agent import AgentApp, AgentConfig
from edge_agent import build as build_agent
from gen.edgebot.v1 import anomaly_pb2, anomaly_pb2_grpc, storage_pb2, storage_pb2_grpc
from ingest_svc import IngestServiceConfig
from ingest_svc import build as build_ingest
from mesh.app import App, running
from mesh.timeutil import NS_PER_S, now_ns, ns_to_ts
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline
from storage_svc import StorageServiceConfig
from storage_svc import build as build_storage

TOKEN = "alice:console-test-token-0123456789"
OPERATOR_TOKEN = TOKEN.split(":", 1)[1]
ALL_TIME = {"start_time": ns_to_ts(NS_PER_S), "end_time": ns_to_ts(now_ns() + 86_400 * NS_PER_S)}


@dataclass
class ConsoleMesh:
    anomaly: AnomalyApp
    agent: AgentApp
    storage: App
    stub: anomaly_pb2_grpc.AnomalyServiceAsyncStub
    storage_stub: storage_pb2_grpc.StorageServiceAsyncStub
    url: str
    syslog_port: int

    async def send_sample(self, test: str) -> int:
        """Send a CrowdSec sample log to the edge agent's syslog port; return the line count."""
        (path,) = CROWDSEC.glob(f"{test}__*.log")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for line in lines:
                sender.sendto(line.encode(), ("127.0.0.1", self.syslog_port))
        return len(lines)

    async def stored(self, text: str) -> int:
        """Stored events whose message contains ``text``."""
        reply = await self.storage_stub.QueryEvents(
            storage_pb2.QueryEventsRequest(
                filter=storage_pb2.EventFilter(text=text, **ALL_TIME), page_size=1000
            )
        )
        return len(reply.events)

    async def wait_stored(self, text: str, count: int, timeout_s: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (found := await self.stored(text)) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{found} of {count} events with {text!r} stored")
            await asyncio.sleep(0.1)

    async def analyse(self, *agents: str) -> anomaly_pb2.RunAnalysisResponse:
        return await self.stub.RunAnalysis(
            anomaly_pb2.RunAnalysisRequest(agents=agents, **ALL_TIME)
        )


def _address(app: App) -> str:
    return f"127.0.0.1:{app.runtime.ports.grpc}"


def console_section(pki: Pki, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    tokens = tmp_path / "console-tokens"
    tokens.write_text(f"# operators of the console\n{TOKEN}\n")
    return {
        "enabled": True,
        "port": 0,
        "tokens_file": str(tokens),
        "client": {"tls": pki.operator().model_dump(mode="json"), "timeout_s": 5},
        "sse_heartbeat_s": 1,
        "sse_retry_ms": 300,
        **overrides,
    }


@asynccontextmanager
async def console_mesh(
    pki: Pki, tmp_path: Path, console: dict[str, Any] | None = None
) -> AsyncIterator[ConsoleMesh]:
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        pipeline = await enter(
            running(build_pipeline(make_config(PipelineServiceConfig, pki, "pipeline")))
        )
        storage = await enter(
            running(
                build_storage(
                    make_config(
                        StorageServiceConfig,
                        pki,
                        "storage",
                        sqlite={"path": str(tmp_path / "events.db")},
                    )
                )
            )
        )
        ingest = await enter(
            running(
                build_ingest(
                    make_config(
                        IngestServiceConfig,
                        pki,
                        "ingest",
                        server={"metrics_port": 0},
                        pipeline={"addresses": [_address(pipeline)], "timeout_s": 2},
                        storage={"addresses": [_address(storage)], "timeout_s": 2},
                    )
                )
            )
        )
        agent = await enter(
            running(
                build_agent(
                    make_config(
                        AgentConfig,
                        pki,
                        "agent",
                        server={"metrics_port": 0},
                        tls=pki.agent("site-a").model_dump(mode="json"),
                        agent={"id": "site-a", "site": "test"},
                        inputs={"syslog_udp": {"host": "127.0.0.1", "port": 0}},
                        spool={"path": str(tmp_path / "spool.db")},
                        shipper={
                            "ingest": {"addresses": [_address(ingest)], "timeout_s": 2},
                            "batch_max_wait_s": 0.05,
                        },
                    )
                )
            )
        )
        assert isinstance(agent, AgentApp)
        section = console if console is not None else console_section(pki, tmp_path)
        section.setdefault(
            "services",
            {
                "ingest": [_address(ingest)],
                "pipeline": [_address(pipeline)],
                "agent site-a": [_address(agent)],
            },
        )
        section.setdefault(
            "monitoring",
            {
                "sample_interval_s": 0.5,
                "metrics": [
                    {
                        "name": "ingest",
                        "kind": "ingest",
                        "url": f"http://127.0.0.1:{ingest.runtime.ports.metrics}/metrics",
                    },
                    {
                        "name": "site-a",
                        "kind": "agent",
                        "url": f"http://127.0.0.1:{agent.runtime.ports.metrics}/metrics",
                    },
                ],
            },
        )
        config = make_config(
            AnomalyServiceConfig,
            pki,
            "anomaly",
            store={"path": str(tmp_path / "anomalies.db")},
            storage={"addresses": [_address(storage)], "timeout_s": 2},
            models={"dir": str(tmp_path / "models"), "poll_interval_s": 0.2},
            cache={"ttl_s": 0},
            console=section,
        )
        anomaly = await enter(running(build_anomaly(config)))
        assert isinstance(anomaly, AnomalyApp)
        assert anomaly.console is not None
        operator = await enter(secure_channel(anomaly.runtime.ports.grpc, pki.operator()))
        reader = await enter(secure_channel(storage.runtime.ports.grpc, pki.operator()))
        udp = agent.inputs["syslog_udp"]
        yield ConsoleMesh(
            anomaly,
            agent,
            storage,
            anomaly_pb2_grpc.AnomalyServiceStub(operator),
            storage_pb2_grpc.StorageServiceStub(reader),
            anomaly.console.url,
            udp.port,  # type: ignore[attr-defined]
        )
