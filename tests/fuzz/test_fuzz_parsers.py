"""Structure-aware fuzzing of the edge parsers and of ingest's request decoding.

Every input must become events that ingest accepts, or a counted error; nothing may raise.
The counts per target are printed at the end of the run ("fuzz inputs tried"); for longer
runs, and coverage-guided atheris runs, see bench/fuzz.py.
"""

from __future__ import annotations

import fuzz_targets
import strategies
from hypothesis import HealthCheck, example, given, settings

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# JSON bodies are the costliest to build (huge maps, deep nesting).
FUZZ_JSON = settings(FUZZ, max_examples=100)


@FUZZ
@given(strategies.SYSLOG_LINES)
@example(b"\xff" * 65535)  # the largest UDP datagram, none of it UTF-8
@example("é".encode() * 32767)  # the same size, all of it UTF-8
@example(b"<13>" + b"\xed\xa0\x80" * 100)  # UTF-8-encoded surrogates
def test_syslog(data: bytes) -> None:
    fuzz_targets.syslog(data)


@FUZZ
@given(strategies.NETFLOW_DATAGRAMS)
def test_netflow(datagrams: list[bytes]) -> None:
    fuzz_targets.netflow(datagrams)


@FUZZ
@given(strategies.NMEA_LINES)
def test_nmea(lines: list[bytes]) -> None:
    fuzz_targets.nmea(lines)


@FUZZ_JSON
@given(strategies.JSON_BODIES)
@example(b'{"name": "\\ud800", "value": "\\udfff x"}')  # lone surrogates, valid JSON
@example(b'{"at": ' + b"9" * 400 + b"}")  # a time too large for a float
@example(b'{"nested": "' + b"n" * 100_000 + b'"}')  # one attribute of 100 kB
def test_http_json_document_mapping(body: bytes) -> None:
    fuzz_targets.http_json(body, "document")


@FUZZ_JSON
@given(strategies.JSON_BODIES)
@example(b'{"items": [{"t": 1e400, "name": "' + b"m" * 70_000 + b'"}]}')
def test_http_json_item_mapping(body: bytes) -> None:
    fuzz_targets.http_json(body, "items")
    fuzz_targets.http_json(body, "default")


@FUZZ
@given(strategies.INGEST_REQUESTS)
def test_ingest_request_decoding(data: bytes) -> None:
    fuzz_targets.ingest_request(data)
