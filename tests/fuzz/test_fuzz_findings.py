"""What fuzzing found, pinned: each case made an event ingest refuses, or raised."""

from __future__ import annotations

import json

import fuzz_targets
from prometheus_client import REGISTRY

from mesh.timeutil import ts_to_ns


def test_a_datagram_of_invalid_utf8_keeps_its_text_within_the_largest_datagram() -> None:
    data = b"<13>Dec 31 23:59:58 host app: " + b"\xff" * 65_000
    event = fuzz_targets.syslog(data)
    assert len(event.message.encode()) <= 65_535
    assert event.message.startswith("\ufffd")
    assert event.attributes["parse.truncated"] == "true"
    assert event.raw == data
    # Latin-1 text grows a little as UTF-8, and is kept whole.
    latin = fuzz_targets.syslog("<13>Dec 31 23:59:58 host app: café crème".encode("latin-1"))
    assert latin.message == "caf\ufffd cr\ufffdme"
    assert "parse.truncated" not in latin.attributes


def test_lone_surrogates_in_json_become_replacement_characters() -> None:
    body = json.dumps({"name": "\ud800", "value": "ok \udfff", "host": "h\udbff"}).encode()
    (event,) = fuzz_targets.http_json(body)
    assert event.attributes["name"] == "\ufffd"
    assert event.attributes["value"] == "ok \ufffd"
    assert event.host == "h\ufffd"
    assert event.message == "\ufffd reads ok \ufffd"


def test_a_time_beyond_any_float_is_refused_not_raised() -> None:
    (event,) = fuzz_targets.http_json(b'{"at": ' + b"9" * 400 + b"}")
    assert event.attributes["http.time_error"].startswith("unreadable time '999")
    assert ts_to_ns(event.time) == fuzz_targets.NOW_NS
    (infinite,) = fuzz_targets.http_json(b'{"at": 1e999}')
    assert "http.time_error" in infinite.attributes


def test_mapped_text_over_its_limit_is_cut_and_named() -> None:
    limits = fuzz_targets.HTTP_LIMITS
    body = json.dumps({"nested": "é" * 10_000, "name": "n" * 70_000}).encode()
    (event,) = fuzz_targets.http_json(body)
    assert len(event.attributes["whole"].encode()) <= limits.max_field_bytes
    assert len(event.attributes["name"].encode()) <= limits.max_field_bytes
    assert len(event.message.encode()) <= limits.max_message_bytes
    assert event.attributes["http.truncated"] == "attributes.name,attributes.whole,message"


def _skipped(reason: str) -> float:
    value = REGISTRY.get_sample_value("edgebot_netflow_skipped_total", {"reason": reason})
    return value or 0.0


def test_a_template_of_hundreds_of_unknown_fields_keeps_an_acceptable_event() -> None:
    fields = [(5000 + i, 1) for i in range(300)]
    datagram = fuzz_targets.v9_packet(
        [
            fuzz_targets.template_set(400, fields),
            fuzz_targets.flow_set(400, bytes(range(256)) + bytes(44)),
        ]
    )
    before = _skipped("fields_over_limit")
    (event,) = fuzz_targets.netflow([datagram])
    assert len(event.attributes) <= 200
    kept = {key for key in event.attributes if key.startswith("netflow.field.")}
    assert kept == {f"netflow.field.{5000 + i}" for i in range(len(kept))}  # template order
    assert event.attributes["netflow.fields_skipped"] == str(300 - len(kept))
    assert _skipped("fields_over_limit") == before + 300 - len(kept)
