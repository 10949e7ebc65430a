"""The pipeline service: redaction, enrichment and validation, in the configured order."""

from pipeline_svc.config import PipelineServiceConfig
from pipeline_svc.server import PipelineApp, build

__all__ = ["PipelineApp", "PipelineServiceConfig", "build"]
