"""NMEA 0183: the sentence parser, a receiver on a pty (pyserial-asyncio), a raw TCP stream
and gpsd fed by the real gpsfake."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import socket
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from edge_peers import Drain, peer_process, require_peer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from edge_agent import AgentConfig
from edge_agent.config_polling import NmeaInputConfig
from edge_agent.inputs.nmea import NmeaInput
from edge_agent.parsers.nmea import FixState, NmeaError, Sentence, checksum, parse_sentence
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError, load_config


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body.encode()):02X}\r\n".encode()


def track(start: dt.datetime, epochs: int) -> list[bytes]:
    """A receiver moving south-west near Rio: GGA, RMC, VTG, GSV per second (recent dates)."""
    lines = []
    for second in range(epochs):
        at = start + dt.timedelta(seconds=second)
        hms, date = at.strftime("%H%M%S.00"), at.strftime("%d%m%y")
        lat, lon = f"2254.{4000 + second:04d}", f"04312.{1000 + second:04d}"
        lines += [
            sentence(f"GPGGA,{hms},{lat},S,{lon},W,1,09,0.8,12.5,M,-5.1,M,,"),
            sentence(f"GPRMC,{hms},A,{lat},S,{lon},W,10.5,225.0,{date},21.0,W"),
            sentence("GPVTG,225.0,T,246.0,M,10.5,N,19.4,K"),
            sentence("GPGSV,1,1,01,05,40,083,46"),
        ]
    return lines


def counted(input_name: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "edgebot_nmea_sentences_total", {"input": input_name, "outcome": outcome}
    )
    return value or 0.0


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path / "spool.db", 1 << 30)
    await spool.open()
    yield spool
    await spool.close()


def nmea_input(spool: Spool, name: str, source: str, **settings: float) -> NmeaInput:
    config = NmeaInputConfig(
        name=name, source=source, reconnect_initial_s=0.1, reconnect_max_s=0.5, **settings
    )
    return NmeaInput(config, spool, "site-a")


# The parser -----------------------------------------------------------------------------


def test_gga_rmc_vtg_fields() -> None:
    gga = parse_sentence(sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    assert isinstance(gga, Sentence)
    assert gga.values == {
        "gps.lat": "48.1173",
        "gps.lon": "11.5166667",
        "gps.fix_quality": "1",
        "gps.satellites": "8",
        "gps.hdop": "0.9",
        "gps.alt_m": "545.4",
        "gps.geoid_sep_m": "46.9",
    }
    rmc = parse_sentence(
        sentence("GNRMC,225446.50,A,4916.45,S,12311.12,W,000.5,054.7,191124,020.3,E")
    )
    assert isinstance(rmc, Sentence)
    assert rmc.talker == "GN"
    assert rmc.values["gps.lat"] == "-49.2741667"
    assert rmc.values["gps.lon"] == "-123.1853333"
    assert rmc.values["gps.speed_kn"] == "0.5"
    assert rmc.values["gps.speed_kmh"] == "0.926"
    assert rmc.values["gps.course"] == "54.7"
    assert rmc.values["gps.mag_variation"] == "20.3"
    assert (rmc.date, rmc.time_of_day) == (
        dt.date(2024, 11, 19),
        dt.time(22, 54, 46, 500_000, tzinfo=dt.UTC),
    )
    vtg = parse_sentence(sentence("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K"))
    assert isinstance(vtg, Sentence)
    assert (vtg.values["gps.speed_kn"], vtg.values["gps.speed_kmh"]) == ("5.5", "10.2")


def test_refused_lines_say_why() -> None:
    good = sentence("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K")
    assert parse_sentence(good.replace(b"*", b"0*")).reason == "bad_checksum"  # type: ignore[union-attr]
    assert parse_sentence(good.split(b"*")[0]) == NmeaError("no_checksum")
    assert isinstance(parse_sentence(good.split(b"*")[0], require_checksum=False), Sentence)
    assert parse_sentence(sentence("GPGSV,1,1,01")).reason == "unsupported"  # type: ignore[union-attr]
    assert parse_sentence(b"hello").reason == "malformed"  # type: ignore[union-attr]
    invalid = parse_sentence(sentence("GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,1,M,1,M,,"))
    assert invalid.reason == "invalid"  # type: ignore[union-attr]
    assert parse_sentence(sentence("GPRMC,1,A")).reason == "invalid"  # type: ignore[union-attr]
    nan = parse_sentence(sentence("GPVTG,nan,T,,M,inf,N,1e5,K"))
    assert nan.reason == "invalid"  # type: ignore[union-attr]


def test_fix_time_combines_rmc_date_with_later_time_of_day() -> None:
    fix = FixState()
    fix.update(parse_sentence(sentence("GPRMC,235959,A,4807.038,N,01131.000,E,1,1,311224,,")))  # type: ignore[arg-type]
    fix.update(parse_sentence(sentence("GPGGA,000000,4807.038,N,01131.000,E,1,08,0.9,1,M,1,M,,")))  # type: ignore[arg-type]
    values, fix_time = fix.take()
    assert fix_time == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)  # past midnight: the next day
    assert values["gps.sentences"] == "RMC,GGA"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_sentence(data)
    assert isinstance(result, Sentence | NmeaError)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["GPGGA", "GPRMC", "GPVTG", "GNGGA"]),
    fields=st.lists(st.text(alphabet="0123456789.,-NSEWAVMTK", max_size=12), max_size=16),
)
def test_checksummed_random_fields_never_raise(kind: str, fields: list[str]) -> None:
    result = parse_sentence(sentence(",".join([kind, *fields])))
    assert isinstance(result, Sentence | NmeaError)


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(-89.99, 89.99), lon=st.floats(-179.99, 179.99))
def test_positions_round_trip(lat: float, lon: float) -> None:
    def nmea(value: float, digits: int) -> str:
        degrees = int(abs(value))
        return f"{degrees:0{digits}d}{(abs(value) - degrees) * 60:07.4f}"

    position = f"{nmea(lat, 2)},{'NS'[lat < 0]},{nmea(lon, 3)},{'EW'[lon < 0]}"
    body = f"GPGGA,120000,{position},1,5,1,1,M,1,M,,"
    parsed = parse_sentence(sentence(body))
    assert isinstance(parsed, Sentence)
    assert float(parsed.values["gps.lat"]) == pytest.approx(lat, abs=1e-5)
    assert float(parsed.values["gps.lon"]) == pytest.approx(lon, abs=1e-5)


# A receiver on a pty --------------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


async def test_serial_pty_checksums_rate_limit_and_fix(
    spool: Spool, pty_pair: tuple[int, str]
) -> None:
    master, path = pty_pair
    receiver = nmea_input(spool, "pty", f"serial://{path}?baud=9600", min_interval_s=0)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=30)
    bad = sentence("GPGGA,000000,1111.111,N,01111.111,E,1,1,1,1,M,1,M,,").replace(b"*", b"1*")
    await receiver.start()
    try:
        await asyncio.wait_for(receiver.connected.wait(), 5)
        # Writes to the master never block for this little data; reads happen in pyserial.
        os.write(master, b"".join(track(start, 2)) + bad)
        events = await Drain(spool).count(4)
        await asyncio.sleep(0.2)
    finally:
        await receiver.stop()
    assert counted("nmea:pty", "bad_checksum") == 1
    assert counted("nmea:pty", "unsupported") == 2  # GSV
    assert len(events) == 4  # a GGA and an RMC per epoch
    last = events[-1]
    assert (last.type, last.service, last.source) == ("gps", "nmea", "site-a/nmea:pty")
    assert last.host == socket.gethostname()
    assert last.severity == event_pb2.SEVERITY_INFORMATIONAL
    attributes = last.attributes
    assert float(attributes["gps.lat"]) == pytest.approx(-(22 + 54.4001 / 60), abs=1e-7)
    assert float(attributes["gps.lon"]) == pytest.approx(-(43 + 12.1001 / 60), abs=1e-7)
    assert (attributes["gps.speed_kn"], attributes["gps.course"]) == ("10.5", "225")
    assert (attributes["gps.alt_m"], attributes["gps.satellites"]) == ("12.5", "9")
    assert (attributes["gps.fix_quality"], attributes["gps.hdop"]) == ("1", "0.8")
    assert last.time.ToDatetime(dt.UTC) == start + dt.timedelta(seconds=1)


async def test_tcp_stream_rate_limit_and_reconnect(spool: Spool) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    connections = 0

    async def replay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b"".join(track(start, 30)))
        await writer.drain()
        writer.close()  # the device drops the connection: the input reconnects

    server = await asyncio.start_server(replay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    receiver = nmea_input(spool, "tcp", f"tcp://127.0.0.1:{port}", min_interval_s=0.25)
    await receiver.start()
    drain = Drain(spool)
    try:
        await drain.until(
            lambda events: connections >= 3 and len(events) >= 3, within=5, what="reconnects"
        )
    finally:
        await receiver.stop()
        server.close()
    await drain.take()
    events = drain.events
    assert len(events) >= 2
    times = [e.observed_time.ToNanoseconds() for e in events]
    assert all(b - a >= 0.24e9 for a, b in itertools.pairwise(times))
    closed = REGISTRY.get_sample_value(
        "edgebot_input_connection_errors_total", {"input": "nmea:tcp", "reason": "closed"}
    )
    assert closed is not None
    assert closed >= 1


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_gpsd_fed_by_gpsfake(spool: Spool, tmp_path: Path) -> None:
    gpsfake = require_peer("gpsfake", "gpsd-clients")
    require_peer("gpsd", "gpsd")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    log_file = tmp_path / "track.nmea"
    log_file.write_bytes(b"".join(track(start, 20)))
    port = free_tcp_port()
    argv = [gpsfake, "-p", "-P", str(port), "-c", "0.05", str(log_file)]
    receiver = nmea_input(spool, "gpsd", f"gpsd://127.0.0.1:{port}", min_interval_s=0)
    with peer_process(argv, tmp_path / "gpsfake.log"):
        await receiver.start()
        try:
            events = await Drain(spool).count(6, within=20)
        finally:
            await receiver.stop()
    for event in events:
        assert event.type == "gps"
        assert event.host == "127.0.0.1"
        assert -23 < float(event.attributes["gps.lat"]) < -22.9
        assert -43.21 < float(event.attributes["gps.lon"]) < -43.2
    timed = [e for e in events if "RMC" in e.attributes["gps.sentences"]]
    assert timed
    offsets = {e.time.ToDatetime(dt.UTC) - start for e in timed}
    assert all(dt.timedelta(0) <= offset < dt.timedelta(seconds=20) for offset in offsets)


def test_nmea_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "edge.yaml"
    for body, key in [
        ("- {name: g, source: 'usb:/dev/x'}", r"inputs\.nmea\.0\.source: .*scheme"),
        ("- {name: g, source: 'serial:///dev/x?baud=fast'}", r"inputs\.nmea\.0\.source: .*baud"),
        ("- {name: g, source: 'tcp://host'}", r"inputs\.nmea\.0\.source: .*port"),
        ("- {name: g, source: 'tcp://h:1', min_interval_s: -1}", r"inputs\.nmea\.0\.min_interval"),
        ("- {name: g, source: 'tcp://h:1'}\n  - {name: g, source: 'tcp://h:2'}", r"unique: g"),
    ]:
        bad.write_text(f"inputs:\n  nmea:\n  {body}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(AgentConfig, bad, "agent", environ={})
