"""Where batches are written: the Sink interface and its implementations."""

from storage_svc.sinks.base import PrimarySink, Sink, SinkError, SinkOpenError, SinkWriteError
from storage_svc.sinks.postgres import PostgresSink
from storage_svc.sinks.sqlite import SqliteSink

__all__ = [
    "PostgresSink",
    "PrimarySink",
    "Sink",
    "SinkError",
    "SinkOpenError",
    "SinkWriteError",
    "SqliteSink",
]
