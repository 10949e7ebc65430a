"""Pipeline processors; importing this package registers every built-in type."""

from pipeline_svc.processors import enrichment, llm, quality, redaction, severity, timestamp
from pipeline_svc.processors.base import REGISTRY, Item, Outcome, Processor, create

__all__ = [
    "REGISTRY",
    "Item",
    "Outcome",
    "Processor",
    "create",
    "enrichment",
    "llm",
    "quality",
    "redaction",
    "severity",
    "timestamp",
]
