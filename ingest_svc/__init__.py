"""The ingest service: the edge-facing stream endpoint (acks, flow control, identity)."""

from ingest_svc.config import IngestServiceConfig
from ingest_svc.server import IngestApp, build

__all__ = ["IngestApp", "IngestServiceConfig", "build"]
