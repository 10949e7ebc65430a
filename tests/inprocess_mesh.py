"""Pipeline, storage and ingest servers in the test's own process, wired together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import Pki, make_config

from ingest_svc import IngestServiceConfig
from ingest_svc import build as build_ingest
from mesh.app import App, running
from pipeline_svc import PipelineServiceConfig
from pipeline_svc import build as build_pipeline
from storage_svc import StorageServiceConfig
from storage_svc import build as build_storage


@dataclass
class Mothership:
    ingest: App
    pipeline: App
    storage: App

    def address(self, app: App) -> str:
        return f"127.0.0.1:{app.runtime.ports.grpc}"


def storage_app(pki: Pki, tmp_path: Path, port: int = 0) -> App:
    config = make_config(
        StorageServiceConfig,
        pki,
        "storage",
        server={"port": port},
        sqlite={"path": str(tmp_path / "events.db")},
    )
    return build_storage(config)


@asynccontextmanager
async def mothership(
    pki: Pki, tmp_path: Path, ingest: dict[str, Any] | None = None
) -> AsyncIterator[Mothership]:
    async with AsyncExitStack() as stack:
        pipeline = await stack.enter_async_context(
            running(build_pipeline(make_config(PipelineServiceConfig, pki, "pipeline")))
        )
        storage = await stack.enter_async_context(running(storage_app(pki, tmp_path)))
        config = make_config(
            IngestServiceConfig,
            pki,
            "ingest",
            ingest=ingest or {},
            pipeline={"addresses": [f"127.0.0.1:{pipeline.runtime.ports.grpc}"], "timeout_s": 2},
            storage={"addresses": [f"127.0.0.1:{storage.runtime.ports.grpc}"], "timeout_s": 2},
        )
        ingest_app = await stack.enter_async_context(running(build_ingest(config)))
        yield Mothership(ingest_app, pipeline, storage)
