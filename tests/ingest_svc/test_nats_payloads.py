"""What a NATS message may carry: protobuf Event/EventBatch, or JSON in the ETL shape."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gen.edgebot.v1 import event_pb2
from ingest_svc.nats_payloads import MessageInfo, PayloadError, decode
from mesh.timeutil import NS_PER_S, ts_to_ns

INFO = MessageInfo(
    stream="EVENTS_RAW", stream_seq=42, subject="events.raw", published_ns=1_700_000_123 * NS_PER_S
)
PROTOBUF_BATCH = {"Content-Type": "application/x-protobuf; messageType=edgebot.v1.EventBatch"}
ETL_EVENT: dict[str, Any] = {
    "id": "0b6f1c1e-5d1a-4a53-9a4e-2f6d3c1f9e01",
    "type": "connect",
    "source": "ebpf-agent",
    "timestamp": 1_700_000_000_250,
    "metadata": {"host_id": "web-01", "pid": 4242, "tags": {"team": "edge"}, "ok": True},
    # Double base64 of the JSON args, as the original ingest service published it.
    "payload": base64.b64encode(
        base64.b64encode(b'{"dst_ip": "10.0.0.5", "dst_port": 443, "comm": "curl"}')
    ).decode(),
}


def json_message(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_etl_json_event_maps_field_by_field() -> None:
    data = json_message(ETL_EVENT)
    batch = decode(data, {"Content-Type": "application/json"}, INFO, "nats")
    assert (batch.batch_id, batch.agent_id, batch.seq) == ("nats:EVENTS_RAW:42", "nats", 42)
    [event] = batch.events
    assert event.id == ETL_EVENT["id"]
    assert (event.type, event.source, event.host) == ("connect", "ebpf-agent", "web-01")
    assert ts_to_ns(event.time) == 1_700_000_000_250_000_000
    assert ts_to_ns(event.observed_time) == INFO.published_ns
    assert dict(event.attributes) == {
        "metadata.host_id": "web-01",
        "metadata.pid": "4242",
        "metadata.tags.team": "edge",
        "metadata.ok": "true",
        "payload.dst_ip": "10.0.0.5",
        "payload.dst_port": "443",
        "payload.comm": "curl",
    }
    assert event.message == "connect dst_ip=10.0.0.5 dst_port=443 comm=curl"
    assert event.raw == data
    assert event.severity == event_pb2.SEVERITY_UNSPECIFIED


def test_etl_event_without_headers_id_or_time_gets_stable_derived_values() -> None:
    body = {"type": "exec", "payload": "plain text line", "metadata": {"level": "warning"}}
    first = decode(json_message(body), None, INFO, "nats")
    again = decode(json_message(body), None, MessageInfo(**{**INFO.__dict__, "deliveries": 2}), "x")
    [event] = first.events
    assert event.id == "nats-EVENTS_RAW-42"
    assert ts_to_ns(event.time) == INFO.published_ns
    assert event.source == event.host == "nats/events.raw"
    assert event.message == "plain text line"
    assert event.severity == event_pb2.SEVERITY_WARNING
    assert again.batch_id == first.batch_id
    assert again.events[0].id == event.id
    assert again.is_retry
    assert not first.is_retry


def test_iso_times_arrays_and_unknown_fields() -> None:
    body = [
        {"id": 7, "timestamp": "2024-02-12T14:10:21Z", "payload": {"message": "hi"}},
        {"timestamp": "1707747021000", "args": {"dst_ip": "1.2.3.4"}, "payload": [1, 2]},
    ]
    batch = decode(json_message(body), {"content-type": "application/json"}, INFO, "nats")
    first, second = batch.events
    assert first.id == "7"
    assert first.message == "hi"
    assert ts_to_ns(first.time) == 1_707_747_021 * NS_PER_S
    assert second.id == "nats-EVENTS_RAW-42-1"
    assert ts_to_ns(second.time) == 1_707_747_021 * NS_PER_S
    assert second.attributes["etl.args.dst_ip"] == "1.2.3.4"
    assert second.attributes["payload"] == "[1,2]"
    # The body of a one-event message is its raw; events of an array carry none.
    assert not second.HasField("raw")


def test_protobuf_event_batch_keeps_its_ids_but_not_its_agent() -> None:
    sent = event_pb2.EventBatch(batch_id="b-77", agent_id="claimed", seq=9)
    sent.events.add(id="e-1", host="h", service="s", message="hello")
    batch = decode(sent.SerializeToString(), PROTOBUF_BATCH, INFO, "nats")
    assert (batch.batch_id, batch.seq, batch.agent_id) == ("b-77", 9, "nats")
    assert batch.events[0].message == "hello"
    assert ts_to_ns(batch.events[0].observed_time) == INFO.published_ns


def test_protobuf_single_event_and_batch_without_id() -> None:
    event = event_pb2.Event(id="e-2", message="one")
    headers = {"Content-Type": 'application/protobuf; messageType="edgebot.v1.Event"'}
    batch = decode(event.SerializeToString(), headers, INFO, "nats")
    assert batch.batch_id == "nats:EVENTS_RAW:42"
    assert [e.id for e in batch.events] == ["e-2"]
    empty_id = event_pb2.EventBatch(events=[event]).SerializeToString()
    assert decode(empty_id, PROTOBUF_BATCH, INFO, "nats").batch_id == "nats:EVENTS_RAW:42"


@pytest.mark.parametrize(
    ("data", "headers", "field", "reason"),
    [
        (b"", None, "body", "empty"),
        (b"{not json", None, "body", "not valid JSON"),
        (b"[]", None, "body", "empty JSON array"),
        (b'"text"', None, "body", "must be a JSON object"),
        (b"[1]", None, "[0]", "must be a JSON object"),
        (b'{"timestamp": "yesterday"}', None, "timestamp", "not epoch milliseconds or ISO"),
        (b'{"timestamp": true}', None, "timestamp", "epoch milliseconds"),
        (b'{"timestamp": -5}', None, "timestamp", "out of range"),
        (b'[{}, {"metadata": [1]}]', None, "[1].metadata", "must be a JSON object"),
        (b'{"id": {"a": 1}}', None, "id", "string or an integer"),
        (b'{"type": 5}', None, "type", "must be a string"),
        (b"x", {"Content-Type": "text/plain"}, "Content-Type", "'text/plain' is not accepted"),
        (b"\x0a\x02", {"Content-Type": "application/x-protobuf"}, "Content-Type", "messageType"),
        (b"\xff\xff\xff", PROTOBUF_BATCH, "body", "not a valid edgebot.v1.EventBatch"),
    ],
)
def test_unusable_messages_name_the_field(
    data: bytes, headers: dict[str, str] | None, field: str, reason: str
) -> None:
    with pytest.raises(PayloadError) as raised:
        decode(data, headers, INFO, "nats")
    assert raised.value.field == field
    assert reason in raised.value.reason


def test_messages_fetched_together_merge_within_the_batch_limits() -> None:
    from ingest_svc.nats_input import Decoded, groups
    from ingest_svc.nats_payloads import merge

    def message(seq: int, events: int) -> Decoded:
        info = MessageInfo(**{**INFO.__dict__, "stream_seq": seq})
        batch = event_pb2.EventBatch(batch_id=info.batch_id)
        batch.events.extend(event_pb2.Event(id=f"{seq}-{n}") for n in range(events))
        return Decoded(message=None, info=info, batch=batch)  # type: ignore[arg-type]

    fetched = [message(1, 2), message(2, 2), message(3, 1), message(4, 9), message(5, 1)]
    grouped = groups(fetched, max_events=5, max_bytes=10_000)
    assert [[d.info.stream_seq for d in group] for group in grouped] == [[1, 2, 3], [4], [5]]
    merged = merge([(d.info, d.batch) for d in grouped[0]], "nats")
    assert (merged.batch_id, merged.seq, merged.agent_id) == ("nats:EVENTS_RAW:1+3", 1, "nats")
    assert [e.id for e in merged.events] == ["1-0", "1-1", "2-0", "2-1", "3-0"]
    assert merge([(grouped[1][0].info, grouped[1][0].batch)], "nats") is grouped[1][0].batch
    by_bytes = groups(fetched[:3], max_events=100, max_bytes=fetched[0].batch.ByteSize() + 1)
    assert [len(group) for group in by_bytes] == [1, 1, 1]
