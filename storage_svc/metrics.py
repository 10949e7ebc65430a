"""Storage metrics, named as the original mothership named them where it had them."""

from prometheus_client import Counter

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
