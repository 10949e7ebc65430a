"""Storage metrics, named as the original mothership named them where it had them."""

from prometheus_client import Counter, Gauge, Histogram

DATABASE_WRITES = Counter(
    "mothership_database_writes_total",
    "Batches handed to a sink, by sink and result (ok, duplicate, failed).",
    ["sink", "result"],
)
EVENTS_WRITTEN = Counter(
    "mothership_database_events_total",
    "Events stored by a sink, and events it skipped because their id was already stored.",
    ["sink", "result"],
)
OUTBOX_DEPTH = Gauge(
    "edgebot_outbox_depth",
    "Events in the outbox that a secondary sink has not taken yet.",
    ["sink"],
)
OUTBOX_LAG = Gauge(
    "edgebot_outbox_lag_seconds",
    "Age of the oldest event in the outbox that a secondary sink has not taken yet.",
    ["sink"],
)
OUTBOX_DROPPED = Counter(
    "edgebot_outbox_dropped_total",
    "Events a secondary sink will never get: reason full (the outbox reached max_events "
    "and dropped its oldest) or outbox_error (the outbox file could not be written).",
    ["sink", "reason"],
)
GROUP_COMMIT_BATCHES = Histogram(
    "mothership_database_group_commit_batches",
    "Batches committed together in one PostgreSQL transaction (more than 1 only while "
    "postgres.max_concurrent_writes transactions are in flight).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
