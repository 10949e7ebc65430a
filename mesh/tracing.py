"""OpenTelemetry tracing with W3C trace context carried in gRPC metadata."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import set_global_textmap
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.config import TracingConfig

log = logging.getLogger(__name__)
PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_KEYS = ("traceparent", "tracestate")


def setup_tracing(config: TracingConfig, service: str) -> TracerProvider | None:
    """Install a tracer provider for this process; export over OTLP when configured."""
    if not config.enabled:
        return None
    set_global_textmap(PROPAGATOR)
    provider = TracerProvider(resource=Resource.create({"service.name": f"edgebot-{service}"}))
    if config.otlp_endpoint:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(config.otlp_endpoint)))
        # Spans still queued when the process ends are sent on the way out.
        atexit.register(provider.shutdown)
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter(endpoint: str) -> SpanExporter:
    """OTLP over gRPC without TLS: a collector beside the service (a sidecar or node agent).

    Imported here, not at the top: the exporter and its protobuf modules cost every
    process a few MB that only a process exporting spans needs.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    return exporter


def extract_context(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> otel_context.Context:
    carrier = {k: v for k, v in metadata or () if k in _TRACE_KEYS and isinstance(v, str)}
    return PROPAGATOR.extract(carrier)


def inject_metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> list[tuple[str, str | bytes]]:
    """Metadata plus the current span's traceparent/tracestate."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    kept = [(k, v) for k, v in metadata or () if k not in _TRACE_KEYS]
    return kept + list(carrier.items())


def current_carrier() -> dict[str, str]:
    """The current span's traceparent/tracestate, for a message that carries its trace."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier


def span_carrier(span: trace.Span) -> dict[str, str]:
    """The W3C traceparent/tracestate naming ``span``, for a message that carries its trace."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier
