"""Ingest metrics, named as the original mothership named them where it had them."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "mothership_ingestion_requests_total",
    "Batches received (stream batches, Push calls, NATS messages), by ack status and "
    "transport (grpc, nats).",
    ["status", "transport"],
)
EVENTS = Counter(
    "mothership_ingestion_events_total",
    "Events received in batches, before validation, by transport (grpc, nats).",
    ["transport"],
)
ACTIVE_CONNECTIONS = Gauge(
    "mothership_active_connections",
    "Open agent streams.",
)
ACK_SECONDS = Histogram(
    "mothership_ingestion_ack_seconds",
    "Time from receiving a batch to sending its ack.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INFLIGHT_BATCHES = Gauge(
    "mothership_ingestion_inflight_batches",
    "Batches being processed (pipeline and storage) right now.",
)
DOWNSTREAM_SECONDS = Histogram(
    "mothership_ingestion_downstream_seconds",
    "Duration of calls to the pipeline and storage services.",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REFUSED = Counter(
    "mothership_ingestion_refused_total",
    "Streams and Push calls refused before processing, by reason.",
    ["reason"],
)
NATS_MESSAGES = Counter(
    "mothership_ingestion_nats_messages_total",
    "NATS input messages by what was answered: acked (stored, or already stored), nak "
    "(downstream failure, redelivered later) or term (unusable, kept as a dead letter).",
    ["outcome"],
)
NATS_TERMINATED = Counter(
    "mothership_ingestion_nats_terminated_total",
    "NATS messages terminated, by the field that made them unusable.",
    ["field"],
)
NATS_INFLIGHT = Gauge(
    "mothership_ingestion_nats_inflight_messages",
    "NATS messages being processed by this replica.",
)
NATS_CONNECTED = Gauge(
    "mothership_ingestion_nats_connected",
    "1 while the NATS input is connected and its consumer is bound, else 0.",
)
PIPELINE_CALL_BATCHES = Histogram(
    "mothership_ingestion_pipeline_call_batches",
    "Batches merged into one pipeline Process call (more than 1 when batches arrive at "
    "once or wait while the calls in flight are at ingest.max_pipeline_calls).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
STORAGE_CALL_BATCHES = Histogram(
    "mothership_ingestion_storage_call_batches",
    "Batches written by one storage call: Write for one, WriteMany for more (more than 1 "
    "when batches arrive at once or wait while the calls in flight are at "
    "ingest.max_storage_calls).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
