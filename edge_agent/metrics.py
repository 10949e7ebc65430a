"""Prometheus metrics of the edge agent."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MESSAGES_RECEIVED = Counter(
    "edgebot_messages_received_total",
    "Messages received by an input, before parsing and spooling.",
    ["input"],
)
SPOOL_DROPPED = Counter(
    "edgebot_spool_dropped_total",
    "Events an input could not hand to the spool, by reason (spool_full, overflow, error).",
    ["reason"],
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
