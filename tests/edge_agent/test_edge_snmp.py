"""SNMP polling against a real net-snmp snmpd on a loopback high port (v2c and v3)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_peers import Drain, peer_process, require_peer
from prometheus_client import REGISTRY
from support import free_udp_port

from edge_agent import AgentConfig
from edge_agent.config_polling import SnmpInputConfig
from edge_agent.inputs.snmp import SnmpInput
from edge_agent.parsers.snmp import COUNTER32_MODULUS, COUNTER64_MODULUS, RateTracker, Sample
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError, load_config

IF_TABLE = "1.3.6.1.2.1.2.2"
IF_IN_OCTETS = "1.3.6.1.2.1.2.2.1.10"
SYS_DESCR = "1.3.6.1.2.1.1.1.0"
IF_NUMBER = "1.3.6.1.2.1.2.1.0"
V3_USER, V3_AUTH, V3_PRIV = "edgebot", "auth-pass-123", "priv-pass-456"


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """snmpd with community 'public' and a v3 authPriv user, on a free UDP port."""
    binary = require_peer("snmpd", "snmpd")
    directory = tmp_path_factory.mktemp("snmpd")
    port = free_udp_port()
    config = directory / "snmpd.conf"
    config.write_text(
        "[snmp] mibs :\n"
        f"agentAddress udp:127.0.0.1:{port}\n"
        "rocommunity public 127.0.0.1\n"
        f'createUser {V3_USER} SHA "{V3_AUTH}" AES "{V3_PRIV}"\n'
        f"rouser {V3_USER} priv\n"
    )
    argv = [binary, "-f", "-C", "-c", str(config), "-Lo", "-p", str(directory / "snmpd.pid")]
    argv.append(f"--persistentDir={directory / 'state'}")
    with peer_process(argv, directory / "snmpd.log", {"SNMP_PERSISTENT_DIR": str(directory)}):
        yield port


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool(tmp_path / "spool.db", 1 << 30)
    await spool.open()
    yield spool
    await spool.close()


def snmp_config(port: int, **overrides: Any) -> SnmpInputConfig:
    return SnmpInputConfig.model_validate(
        {
            "name": "router",
            "host": "127.0.0.1",
            "port": port,
            "interval_s": 0.3,
            "timeout_s": 1,
            "retries": 2,
            "get": [{"oid": SYS_DESCR, "name": "sys_descr"}, {"oid": IF_NUMBER}],
            **overrides,
        }
    )


def polls(input_name: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "edgebot_snmp_polls_total", {"input": input_name, "outcome": outcome}
    )
    return value or 0.0


def loopback_rows(events: list[event_pb2.Event]) -> list[event_pb2.Event]:
    return [e for e in events if e.attributes.get("snmp.if.2") == "lo"]


def counter_moved(events: list[event_pb2.Event]) -> bool:
    """snmpd refreshes its ifTable cache every few seconds: wait for a poll that saw it."""
    values = [int(row.attributes["snmp.if.10"]) for row in loopback_rows(events)]
    return any(after != before for before, after in itertools.pairwise(values))


async def test_v2c_get_walk_and_rate_from_two_polls(snmpd: int, spool: Spool) -> None:
    config = snmp_config(snmpd, walk=[{"oid": IF_TABLE, "name": "if"}], rates=[IF_IN_OCTETS])
    snmp = SnmpInput(config, spool, "site-a")
    await snmp.start()
    try:
        events = await Drain(spool).until(counter_moved, within=15, what="ifInOctets of lo moved")
    finally:
        await snmp.stop()

    scalars = {e.time.ToNanoseconds(): e for e in events if "snmp.sys_descr" in e.attributes}
    first = next(iter(scalars.values()))
    assert (first.type, first.source, first.host, first.service) == (
        "snmp",
        "site-a/snmp:router",
        "127.0.0.1",
        "snmp",
    )
    assert first.severity == event_pb2.SEVERITY_INFORMATIONAL
    assert first.attributes["snmp.sys_descr"].startswith("Linux")
    assert first.attributes["snmp.target"] == f"127.0.0.1:{snmpd}"
    interfaces = int(first.attributes[f"snmp.{IF_NUMBER}"])

    rows = [e for e in events if e.attributes.get("snmp.table") == "if"]
    first_rows = [r for r in rows if r.time == first.time]
    assert len(first_rows) == interfaces
    assert sorted(r.attributes["snmp.index"] for r in first_rows) == sorted(
        r.attributes["snmp.if.1"] for r in first_rows
    )
    loopback = loopback_rows(events)
    assert "snmp.if.10.rate" not in loopback[0].attributes  # one sample: no rate yet
    for before, after in itertools.pairwise(loopback):
        # The agent's own clock (sysUpTime) between the two polls measures the rate.
        elapsed_s = float(scalars[after.time.ToNanoseconds()].attributes["snmp.sys_uptime_s"])
        elapsed_s -= float(scalars[before.time.ToNanoseconds()].attributes["snmp.sys_uptime_s"])
        octets = int(after.attributes["snmp.if.10"]) - int(before.attributes["snmp.if.10"])
        rate = float(after.attributes["snmp.if.10.rate"])
        assert rate == pytest.approx(octets / elapsed_s, rel=1e-3, abs=1e-3)
        assert "snmp.if.16.rate" not in after.attributes  # not a configured counter
    assert any(float(row.attributes.get("snmp.if.10.rate", 0)) > 0 for row in loopback)


async def test_wrong_community_times_out_counted_and_logged(
    snmpd: int, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    config = snmp_config(
        snmpd, name="wrong", community="not-the-community", timeout_s=0.2, retries=0
    )
    snmp = SnmpInput(config, spool, "site-a")
    before = polls("snmp:wrong", "timeout")
    await snmp.start()
    try:
        with caplog.at_level(logging.WARNING, logger="edge_agent.inputs.snmp"):
            await asyncio.sleep(1.0)
        assert polls("snmp:wrong", "timeout") - before >= 2  # it keeps polling
        assert snmp._task is not None
        assert not snmp._task.done()
    finally:
        await snmp.stop()
    assert spool.events == 0
    assert any("timeout" in r.getMessage() for r in caplog.records)
    assert not any("not-the-community" in r.getMessage() for r in caplog.records)


async def test_v3_auth_priv_get(snmpd: int, spool: Spool) -> None:
    v3 = {"user": V3_USER, "auth_protocol": "sha", "auth_key": V3_AUTH}
    config = snmp_config(
        snmpd, name="v3", version="v3", v3={**v3, "priv_protocol": "aes128", "priv_key": V3_PRIV}
    )
    snmp = SnmpInput(config, spool, "site-a")
    await snmp.start()
    try:
        (event, *_) = await Drain(spool).count(1)
    finally:
        await snmp.stop()
    assert event.attributes["snmp.version"] == "v3"
    assert event.attributes["snmp.sys_descr"].startswith("Linux")

    wrong = snmp_config(
        snmpd,
        name="v3-wrong",
        version="v3",
        timeout_s=0.3,
        retries=0,
        v3={**v3, "priv_protocol": "aes128", "priv_key": "not-the-key"},
    )
    failing = SnmpInput(wrong, spool, "site-a")
    await failing.poll()
    assert polls("snmp:v3-wrong", "ok") == 0
    assert polls("snmp:v3-wrong", "timeout") + polls("snmp:v3-wrong", "error") == 1
    await failing.stop()


def test_rates_handle_wrap_and_agent_restart() -> None:
    rates = RateTracker()
    oid = "1.3.6.1.2.1.2.2.1.10.1"

    def sample(value: int, modulus: int | None = COUNTER32_MODULUS) -> Sample:
        return Sample(oid, str(value), value, modulus)

    assert rates.rate(sample(COUNTER32_MODULUS - 100), 1000, 0) is None
    assert rates.rate(sample(900), 2000, 0) == pytest.approx(1000 / 10)  # wrapped 32-bit
    assert rates.resets["wrap"] == 1
    assert rates.rate(sample(100), 50, 0) is None  # sysUpTime went back: agent restarted
    assert rates.resets["agent_restart"] == 1
    assert rates.rate(sample(600), 150, 0) == pytest.approx(500.0)
    assert rates.rate(sample(400, None), 250, 0) is None  # a gauge went down: no rate
    assert rates.resets["decreased"] == 1
    assert rates.rate(sample(400, None), 250, 0) is None  # same agent tick: no rate

    big = RateTracker()
    assert big.rate(Sample(oid, "", COUNTER64_MODULUS - 1, COUNTER64_MODULUS), None, 0) is None
    rate = big.rate(Sample(oid, "", 1, COUNTER64_MODULUS), None, 2_000_000_000)
    assert rate == pytest.approx(1.0)  # local clock when there is no sysUpTime


def test_snmp_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "edge.yaml"
    target = "  - {name: r, host: 127.0.0.1"
    for body, key in [
        (f"{target}, get: [{{oid: IF-MIB::ifTable}}]}}", r"inputs\.snmp\.0\.get\.0\.oid"),
        (f"{target}}}", r"inputs\.snmp\.0: .*get: at least one"),
        (f"{target}, get: [{{oid: 1.3.6}}], version: v3}}", r"inputs\.snmp\.0: .*v3: user"),
        (
            f"{target}, get: [{{oid: 1.3.6}}], version: v3, v3: {{user: u, auth_key: short}}}}",
            r"inputs\.snmp\.0\.v3: .*auth_key",
        ),
        (f"{target}, get: [{{oid: 1.3.6}}], rates: [ifInOctets]}}", r"inputs\.snmp\.0\.rates"),
    ]:
        bad.write_text(f"inputs:\n  snmp:\n{body}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(AgentConfig, bad, "agent", environ={})
