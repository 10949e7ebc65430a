"""Prometheus metrics of the edge agent."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

MESSAGES_RECEIVED = Counter(
    "edgebot_messages_received_total",
    "Messages received by an input, before parsing and spooling.",
    ["input"],
)
SOURCE_MESSAGES = Counter(
    "edgebot_input_source_messages_total",
    "Messages received from each sending address (rate() gives per-source rates); past an "
    "input's max_tracked_sources, further senders are counted as source 'other'.",
    ["input", "source"],
)
SPOOL_DROPPED = Counter(
    "edgebot_spool_dropped_total",
    "Events dropped before or in the spool, by reason (spool_full: refused by a full spool; "
    "disk_full: the disk's free-space reserve was reached; "
    "evicted: a waiting event removed to make room for a more severe one; overflow: an "
    "input's own buffer was full; error: the spool failed).",
    ["reason"],
)
SPOOL_DROPPED_BY_SEVERITY = Counter(
    "edgebot_spool_dropped_by_severity_total",
    "Events a full spool refused or evicted, by their syslog severity.",
    ["severity"],
)
SPOOL_EVENTS = Gauge("edgebot_spool_events", "Events in the spool waiting for an ack.")
SPOOL_BYTES = Gauge("edgebot_spool_bytes", "Serialized bytes of the events in the spool.")
DEAD_LETTERS = Counter(
    "edgebot_dead_letters_total",
    "Events moved to the local dead-letter table, by the ack status that refused them.",
    ["status"],
)
BATCHES_SENT = Counter(
    "edgebot_batches_sent_total", "Batches written to the ingest stream (first sends and re-sends)."
)
BATCHES_RETRIED = Counter(
    "edgebot_batches_retried_total",
    "Batches re-sent, after a RETRY ack or a reconnect.",
    ["reason"],
)
BATCHES_ACKED = Counter(
    "edgebot_batches_acked_total", "Acks received from ingest, by status.", ["status"]
)
LAST_SHIP = Gauge(
    "edgebot_last_ship_timestamp_seconds",
    "Unix time of the last ack that removed a batch from the spool.",
)
BREAKER_OPEN = Gauge(
    "edgebot_shipper_breaker_open",
    "1 while an ingest address's circuit breaker keeps it out of the fail-over rotation.",
    ["address"],
)
BATCH_TARGET = Gauge(
    "edgebot_shipper_batch_target_events",
    "Events the shipper currently puts in a full batch (moves with adaptive batching).",
)
CONNECTED = Gauge("edgebot_shipper_connected", "1 while a stream to ingest is established.")
RECONNECTS = Counter(
    "edgebot_shipper_reconnects_total", "Failed or ended ingest streams, by cause.", ["cause"]
)
INPUT_BYTES = Counter(
    "edgebot_input_bytes_total", "Bytes read by an input (socket or file).", ["input"]
)
INPUT_CONNECTIONS = Gauge(
    "edgebot_input_connections", "Open connections of a stream input.", ["input"]
)
INPUT_CONNECTION_ERRORS = Counter(
    "edgebot_input_connection_errors_total",
    "Connections refused or cut by a stream input, by reason "
    "(max_connections, tls_handshake, idle_timeout, reset).",
    ["input", "reason"],
)
FRAMING_ERRORS = Counter(
    "edgebot_input_framing_errors_total",
    "Frames or lines that could not be read whole, by reason (oversize, incomplete).",
    ["input", "reason"],
)
INPUT_BLOCKED_SECONDS = Counter(
    "edgebot_input_blocked_seconds_total",
    "Time an input that can wait (TCP, files) spent paused because the spool was full.",
    ["input"],
)
FILES_TRACKED = Gauge("edgebot_files_tracked", "Files a file input has open.", ["input"])
FILE_ROTATIONS = Counter(
    "edgebot_file_rotations_total",
    "Rotations a file input noticed, by kind (rename, truncate, replaced).",
    ["input", "kind"],
)

UDP_KERNEL_DROPS = Gauge(
    "edgebot_input_kernel_drops",
    "Datagrams the kernel dropped because the input's receive buffer was full.",
    ["input"],
)

SNMP_POLLS = Counter(
    "edgebot_snmp_polls_total",
    "SNMP polls of a target, by outcome (ok, timeout, error).",
    ["input", "outcome"],
)
SNMP_COUNTER_RESETS = Counter(
    "edgebot_snmp_counter_resets_total",
    "Counter samples that gave no rate or a wrapped one, by reason "
    "(wrap, agent_restart, decreased).",
    ["input", "reason"],
)
NETFLOW_SKIPPED = Counter(
    "edgebot_netflow_skipped_total",
    "NetFlow/IPFIX sets, records or fields not turned into events, by reason (no_template, "
    "options_data, record_limit, bad_template, reserved_set, fields_over_limit).",
    ["reason"],
)
NETFLOW_TEMPLATES = Gauge(
    "edgebot_netflow_templates", "v9/IPFIX templates currently known over all exporters."
)
NMEA_SENTENCES = Counter(
    "edgebot_nmea_sentences_total",
    "NMEA lines read, by outcome (ok, bad_checksum, no_checksum, malformed, unsupported, "
    "invalid, oversize).",
    ["input", "outcome"],
)
HTTP_POLLS = Counter(
    "edgebot_http_polls_total",
    "HTTP JSON polls, by outcome (ok, http_status, timeout, transport, oversize, "
    "invalid_json, too_deep, token).",
    ["input", "outcome"],
)
INPUT_RECORDS_SKIPPED = Counter(
    "edgebot_input_records_skipped_total",
    "Records an input read but did not turn into events, by reason (e.g. max_events).",
    ["input", "reason"],
)

FILE_OUTPUT_BATCHES = Counter(
    "edgebot_file_output_batches_total", "Batches written whole and fsynced by the file output."
)
FILE_OUTPUT_EVENTS = Counter(
    "edgebot_file_output_events_total", "Events written by the file output."
)
FILE_OUTPUT_FILES = Counter(
    "edgebot_file_output_files_total", "Output files closed (rotated or at shutdown)."
)
FILE_OUTPUT_ERRORS = Counter(
    "edgebot_file_output_errors_total",
    "Batch writes the file output failed (the batch stays spooled and is written again).",
)


class SourceTally:
    """Per-sender message counts of one input, with a bounded number of label values."""

    OTHER = "other"

    def __init__(self, input_name: str, max_sources: int) -> None:
        self.input_name = input_name
        self.max_sources = max_sources
        self._counters: dict[str, Any] = {}

    def count(self, source: str, messages: int = 1) -> None:
        counter = self._counters.get(source)
        if counter is None:
            counter = self._counter_for(source)
        counter.inc(messages)

    def _counter_for(self, source: str) -> Any:
        tracked = len(self._counters) - (self.OTHER in self._counters)
        label = source if tracked < self.max_sources else self.OTHER
        counter = SOURCE_MESSAGES.labels(self.input_name, label)
        if label == source:
            self._counters[source] = counter
        else:
            self._counters.setdefault(self.OTHER, counter)
        return counter
