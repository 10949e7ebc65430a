"""Fuzz targets, shared by the Hypothesis tests next to this file and by bench/fuzz.py (long
Hypothesis runs, and coverage-guided atheris runs where atheris is installed).

Each target feeds one input to a parser the way its edge input does and checks the contract:
nothing raises, and the input becomes events — each one serialisable and acceptable to
ingest under its default limits, so the edge never ships what the mothership must refuse —
or a counted error. ``TRIED`` counts the inputs each target saw; ``OUTCOMES`` what became
of them.
"""

from __future__ import annotations

import collections
import struct
from typing import Any, Final
from zoneinfo import ZoneInfo

from edge_agent.config_polling import (
    HttpInputConfig,
    HttpMappingConfig,
    NetflowConfig,
    NmeaInputConfig,
)
from edge_agent.inputs.netflow import NetflowInput, _Datagram
from edge_agent.inputs.nmea import POSITION_SENTENCES, NmeaInput
from edge_agent.parsers.http_json import MappingLimits, Response, map_response
from edge_agent.parsers.nmea import NmeaError, parse_sentence
from edge_agent.parsers.syslog import Received, parse_syslog
from gen.edgebot.v1 import event_pb2
from ingest_svc.config import IngestSection
from ingest_svc.decoding import decode_stream_request
from ingest_svc.validation import batch_problem, check_events, event_problem

TRIED: collections.Counter[str] = collections.Counter()
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()
INGEST_DEFAULTS: Final = IngestSection()
NOW_NS: Final = 1_735_689_599 * 10**9  # 2024-12-31T23:59:59Z: New Year rollover in reach
EXPORTER: Final = "192.0.2.1"


def accepted_by_ingest(event: event_pb2.Event) -> None:
    """The event survives the wire and ingest's per-event checks with default limits."""
    wire = event.SerializeToString()
    assert event_pb2.Event.FromString(wire) == event
    problem = event_problem(event, INGEST_DEFAULTS, event.ByteSize())
    assert problem is None, f"ingest would refuse the event: {problem}"


def _count(target: str, outcome: str, amount: int = 1) -> None:
    OUTCOMES[target, outcome] += amount


# syslog --------------------------------------------------------------------------------

SYSLOG_RECEIVED: Final = Received(NOW_NS, "192.0.2.7", "fuzz/syslog", ZoneInfo("America/New_York"))


def syslog(data: bytes) -> event_pb2.Event:
    """One datagram (or TCP frame, or file line) -> one event, syslog or raw."""
    TRIED["syslog"] += 1
    event = parse_syslog(data, SYSLOG_RECEIVED)
    assert event.raw == data
    assert event.id
    if event.type == "raw":
        assert event.attributes["parse.error"]
        _count("syslog", "raw event")
    else:
        assert event.type == "syslog", event.type
        assert event.attributes["syslog.format"] in ("rfc3164", "rfc5424")
        assert event_pb2.SEVERITY_EMERGENCY <= event.severity <= event_pb2.SEVERITY_DEBUG
        _count("syslog", "syslog event")
    accepted_by_ingest(event)
    return event


# NetFlow -------------------------------------------------------------------------------

# Seeded into every collector: data sets for it decode, so mutations reach the records.
SEED_V9_FIELDS: Final = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (22, 4)]
SEED_TEMPLATE_ID: Final = 300


def v9_packet(sets: list[bytes], count: int | None = None, uptime_ms: int = 100_000) -> bytes:
    header = struct.pack("!HHIIII", 9, len(sets) if count is None else count, uptime_ms, 1, 2, 7)
    return header + b"".join(sets)


def flow_set(set_id: int, body: bytes) -> bytes:
    padding = b"\0" * (-len(body) % 4)
    return struct.pack("!HH", set_id, 4 + len(body) + len(padding)) + body + padding


def template_set(template_id: int, fields: list[tuple[int, int]], set_id: int = 0) -> bytes:
    body = struct.pack("!HH", template_id, len(fields))
    body += b"".join(struct.pack("!HH", *field) for field in fields)
    return flow_set(set_id, body)


SEED_TEMPLATE: Final = v9_packet([template_set(SEED_TEMPLATE_ID, SEED_V9_FIELDS)])


def netflow_collector() -> NetflowInput:
    """A collector as the agent configures it by default, with the seed template learned.

    Only its decoding is driven: nothing is started and no spool is touched."""
    collector = NetflowInput(NetflowConfig(), None, "fuzz")  # type: ignore[arg-type]
    collector._events(_Datagram(SEED_TEMPLATE, EXPORTER, NOW_NS))
    return collector


def netflow(datagrams: list[bytes], collector: NetflowInput | None = None) -> list[event_pb2.Event]:
    """Datagrams from one exporter, in order -> flow events, raw events, counted skips."""
    collector = collector or netflow_collector()
    events: list[event_pb2.Event] = []
    for data in datagrams:
        TRIED["netflow"] += 1
        produced = collector._events(_Datagram(data, EXPORTER, NOW_NS))
        limit = collector.config.max_records_per_datagram
        assert len([e for e in produced if e.type == "netflow"]) <= limit
        for event in produced:
            if event.type == "raw":
                assert event.attributes["parse.error"]
                assert event.raw == data
            else:
                assert event.type == "netflow", event.type
            accepted_by_ingest(event)
        flows = sum(e.type == "netflow" for e in produced)
        _count("netflow", "flow events", flows)
        _count("netflow", "raw events", len(produced) - flows)
        if not produced:
            _count("netflow", "datagrams with no event (templates, counted skips)")
        events.extend(produced)
    return events


# NMEA ----------------------------------------------------------------------------------


def nmea_input() -> NmeaInput:
    config = NmeaInputConfig(name="fuzz", source="tcp://127.0.0.1:1", min_interval_s=0)
    return NmeaInput(config, None, "fuzz")  # type: ignore[arg-type]


def nmea(lines: list[bytes], receiver: NmeaInput | None = None) -> list[event_pb2.Event]:
    """Lines of one receiver -> counted sentences, and fix events as the input makes them."""
    receiver = receiver or nmea_input()
    events = []
    for line in lines:
        TRIED["nmea"] += 1
        sentence = parse_sentence(line, receiver.config.require_checksum)
        if isinstance(sentence, NmeaError):
            assert sentence.reason in ("bad_checksum", "no_checksum", "malformed", "unsupported",
                                       "invalid"), sentence  # fmt: skip
            _count("nmea", f"refused: {sentence.reason}")
            continue
        _count("nmea", "sentence ok")
        receiver.fix.update(sentence)
        if sentence.kind in POSITION_SENTENCES and receiver.fix.has_position:
            event = receiver._event()
            assert event.type == "gps"
            accepted_by_ingest(event)
            _count("nmea", "fix event")
            events.append(event)
    return events


# HTTP JSON poller ----------------------------------------------------------------------

HTTP_MAPPINGS: Final = {
    "document": HttpMappingConfig(
        message="{name} reads {value}",
        host="{host}",
        time="at",
        attributes={"name": "name", "value": "value", "whole": "nested", "first": "list[0]"},
    ),
    "items": HttpMappingConfig(
        message="{items[].name}",
        service="{items[].service}",
        time="items[].t",
        attributes={"state": "items[].state", "site": "site", "raw": "items[]"},
    ),
    "default": HttpMappingConfig(),
}
HTTP_DEFAULTS: Final = HttpInputConfig(name="fuzz", url="https://api.example/v1")
HTTP_LIMITS: Final = MappingLimits(
    HTTP_DEFAULTS.max_json_depth,
    HTTP_DEFAULTS.max_events_per_poll,
    HTTP_DEFAULTS.max_field_bytes,
    HTTP_DEFAULTS.max_message_bytes,
)


def http_json(body: bytes, mapping: str = "document") -> list[event_pb2.Event]:
    """One 2xx response body -> events through the mapping, or one raw event and an error."""
    TRIED["http_json"] += 1
    response = Response(body, 200, "https://api.example/v1", "fuzz/http", "api.example", "fuzz",
                        NOW_NS)  # fmt: skip
    mapped = map_response(response, HTTP_MAPPINGS[mapping], HTTP_LIMITS)
    assert len(mapped.events) <= HTTP_LIMITS.max_events
    if mapped.error is not None:
        assert mapped.failure in ("invalid_json", "too_deep"), mapped.failure
        (event,) = mapped.events
        assert event.type == "raw"
        assert event.raw == body
        _count("http_json", f"raw event ({mapped.failure})")
    else:
        _count("http_json", "mapped events", len(mapped.events))
        cut = sum("http.truncated" in e.attributes for e in mapped.events)
        if cut:
            _count("http_json", "events with cut text (named in http.truncated)", cut)
        if not mapped.events:
            _count("http_json", "responses with an empty item list")
    if mapped.skipped:
        _count("http_json", "items over the per-poll limit (counted)", mapped.skipped)
    for event in mapped.events:
        accepted_by_ingest(event)
    return mapped.events


# Ingest request decoding ---------------------------------------------------------------


def ingest_request(data: bytes) -> None:
    """Bytes of one StreamRequest -> a request, placeholders with per-event errors, or a
    problem naming a field; never an exception, and never an unnamed error."""
    TRIED["ingest_request"] += 1
    incoming = decode_stream_request(data)
    if incoming.problem is not None:
        field, reason = incoming.problem
        assert field
        assert reason
        _count("ingest_request", "refused as a whole (named field)")
        return
    request = incoming.request
    kind = request.WhichOneof("kind")
    if kind != "batch":
        _count("ingest_request", f"decoded: {kind or 'empty request'}")
        return
    batch = request.batch
    assert all(index < len(batch.events) for index in incoming.undecodable)
    if batch_problem(batch, batch.ByteSize(), INGEST_DEFAULTS) is not None:
        _count("ingest_request", "batch rejected (named limit)")
        return
    checked = check_events(batch, INGEST_DEFAULTS, incoming.undecodable)
    assert len(checked.valid) + len(checked.errors) == len(batch.events)
    if incoming.encoded is not None:  # the bytes as received decide as re-encoding does
        as_received = check_events(batch, INGEST_DEFAULTS, encoded=incoming.encoded.events)
        assert as_received.valid_index == checked.valid_index
        parsed = [event_pb2.Event.FromString(data) for data in as_received.valid_encoded]
        assert parsed == checked.valid
    assert {e.index for e in checked.errors} >= set(incoming.undecodable)
    assert all(error.field and error.reason for error in checked.errors)
    _count("ingest_request", "events accepted", len(checked.valid))
    _count("ingest_request", "per-event errors", len(checked.errors))


def summary() -> list[str]:
    lines = []
    for target in sorted(TRIED):
        outcomes = ", ".join(
            f"{outcome} {count}" for (name, outcome), count in sorted(OUTCOMES.items())
            if name == target
        )  # fmt: skip
        lines.append(f"{target}: {TRIED[target]} inputs ({outcomes})")
    return lines


def reset() -> None:
    TRIED.clear()
    OUTCOMES.clear()


def as_dict() -> dict[str, Any]:
    return {target: TRIED[target] for target in sorted(TRIED)}
