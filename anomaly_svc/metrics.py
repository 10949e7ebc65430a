"""Prometheus metrics of the anomaly service."""

from prometheus_client import Counter

CYCLES = Counter(
    "edgebot_anomaly_cycles_total",
    "Analysis cycles by agent and outcome (ok, deferred, error).",
    ["agent", "outcome"],
)
ANOMALIES = Counter(
    "edgebot_anomalies_total",
    "Anomalies recorded (new and recurring) by agent and syslog severity name.",
    ["agent", "severity"],
)
SEVERITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
ALERTS = Counter("edgebot_anomaly_alerts_total", "Alerts raised by kind.", ["kind"])
EXPORTS = Counter("edgebot_anomaly_exports_total", "Export jobs ended, by outcome.", ["outcome"])
NOTIFICATIONS = Counter(
    "edgebot_anomaly_notifications_total",
    "Notification deliveries by channel and outcome (sent, retried, failed, dropped).",
    ["channel", "outcome"],
)
NOTIFY_SUPPRESSED = Counter(
    "edgebot_anomaly_notifications_suppressed_total",
    "Alerts a rule held back: dedupe (dropped), rate_limit (a group delayed).",
    ["rule", "reason"],
)
