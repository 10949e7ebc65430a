"""Pipeline metrics, named as the original mothership named them where it had them."""

from prometheus_client import Counter, Histogram

PROCESSOR_SECONDS = Histogram(
    "mothership_pipeline_duration_seconds",
    "Time one processor spent on one batch.",
    ["processor"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
EVENTS = Counter(
    "mothership_pipeline_events_total",
    "Events leaving the pipeline, by outcome (passed, rejected, quarantined).",
    ["outcome"],
)
RELOADS = Counter(
    "mothership_pipeline_reloads_total",
    "Configuration reloads, by result (applied, refused).",
    ["result"],
)
