"""Enrichment: add_tags, service_extraction, geo_hints, site_environment, reverse_dns."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from typing import Any

import pytest
from redaction_helpers import event, pipeline, run

from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError
from pipeline_svc.processors.enrichment.addresses import tag_prefix
from pipeline_svc.processors.enrichment.reverse_dns import ReverseDns


async def one(source: event_pb2.Event, settings: dict[str, Any]) -> event_pb2.Event:
    return (await run([source], [settings])).events[0]


async def test_add_tags_static_and_conditional() -> None:
    settings = {
        "type": "add_tags",
        "tags": {"team": "netops"},
        "rules": [
            {"service": "dnsmasq*", "tags": {"category": "dns"}},
            {"host": "gw-*", "service": "sshd", "tags": {"category": "access"}},
        ],
    }
    dns = await one(event("x", service="dnsmasq-dhcp", tags={"team": "mine"}), settings)
    assert dict(dns.tags) == {"team": "mine", "category": "dns"}
    ssh = await one(event("x", service="sshd", host="gw-1"), settings)
    assert dict(ssh.tags) == {"team": "netops", "category": "access"}
    other = await one(event("x", service="sshd", host="core-1"), settings)
    assert dict(other.tags) == {"team": "netops"}


@pytest.mark.parametrize(
    ("fields", "service", "attributes"),
    [
        ({"service": "sshd(pam_unix)[19939]"}, "sshd", {"process.pid": "19939",
                                                       "process.subsystem": "pam_unix"}),
        ({"service": "/usr/sbin/dnsmasq"}, "dnsmasq", {}),
        ({"attributes": {"program": "/apps/x86_64/sbin/gmetad[1682]"}}, "gmetad",
         {"program": "/apps/x86_64/sbin/gmetad[1682]", "process.pid": "1682"}),
        ({"message": "dropbear[1317]: Exit (root): Disconnect received"}, "dropbear",
         {"process.pid": "1317"}),
        ({"message": "/usr/sbin/cron: job started"}, "cron", {}),
        ({"message": "error: disk full"}, "", {}),
        ({"service": "netifd"}, "netifd", {}),
    ],
)  # fmt: skip
async def test_service_extraction(
    fields: dict[str, Any], service: str, attributes: dict[str, str]
) -> None:
    extracted = await one(event_pb2.Event(id="e", **fields), {"type": "service_extraction"})
    assert extracted.service == service
    assert dict(extracted.attributes) == attributes


async def test_service_from_hostname_convention() -> None:
    settings = {"type": "service_extraction", "hostname_pattern": r"(?P<service>[a-z]+)-\d+$"}
    assert (await one(event("no prefix", host="dns-01"), settings)).service == "dns"
    with pytest.raises(ConfigError, match=r"processors\.0\.hostname_pattern: .*'service'"):
        pipeline([{"type": "service_extraction", "hostname_pattern": "(?P<x>a)"}])


async def test_geo_hints_longest_prefix_and_scopes() -> None:
    settings = {
        "type": "geo_hints",
        "networks": [
            {"cidr": "10.0.0.0/8", "region": "emea"},
            {"cidr": "10.20.0.0/16", "site": "ams-1", "region": "emea-west",
             "location": "52.37,4.90", "tags": {"owner": "netops"}},
        ],
    }  # fmt: skip
    source = event(
        "x",
        host="127.0.0.1",
        attributes={"net.src_ip": "10.20.3.4", "net.dst_ip": "8.8.8.8"},
    )
    tags = dict((await one(source, settings)).tags)
    assert tags == {
        "net.src.scope": "private",
        "net.src.site": "ams-1",
        "net.src.region": "emea-west",
        "net.src.location": "52.37,4.90",
        "owner": "netops",
        "net.dst.scope": "public",
        "host.scope": "loopback",
    }
    v6 = await one(event("x", attributes={"net.src_ip": "fe80::1"}), settings)
    assert v6.tags["net.src.scope"] == "link_local"
    not_ip = await one(event("x", attributes={"net.src_ip": "[REDACTED:ipv4]"}), settings)
    assert dict(not_ip.tags) == {}


def test_geo_hints_bad_cidr_and_missing_maxmind() -> None:
    with pytest.raises(ConfigError, match=r"processors\.0\.networks\.0\.cidr: .*not a network"):
        pipeline([{"type": "geo_hints", "networks": [{"cidr": "10.0.0.300/8"}]}])
    if importlib.util.find_spec("maxminddb") is None:
        with pytest.raises(ConfigError, match=r"maxmind_db: .*'maxminddb' package"):
            pipeline([{"type": "geo_hints", "maxmind_db": "/tmp/GeoLite2-City.mmdb"}])


def test_tag_prefix() -> None:
    assert tag_prefix("net.src_ip") == "net.src"
    assert tag_prefix("client.ip") == "client"
    assert tag_prefix("peer") == "peer"


async def test_site_and_environment_from_hostname_and_config() -> None:
    settings = {
        "type": "site_environment",
        "site": "hq",
        "environment": "production",
        "hostname_patterns": [r"(?P<site>[a-z]{3})-(?P<env>prod|stg|dev)-(?P<role>[a-z]+)\d*$"],
    }
    conventional = await one(event("x", host="AMS-stg-fw01"), settings)
    assert dict(conventional.tags) == {"site": "ams", "env": "staging", "role": "fw"}
    other = await one(event("x", host="printer"), settings)
    assert dict(other.tags) == {"site": "hq", "env": "production"}
    with pytest.raises(ConfigError, match=r"processors\.0\.hostname_patterns: .*no named group"):
        pipeline([{"type": "site_environment", "hostname_patterns": ["[a-z]+"]}])


async def test_reverse_dns_fake_mode() -> None:
    settings = {"type": "reverse_dns", "mode": "fake", "use_host": True}
    source = event("x", host="2001:db8::a0", attributes={"net.src_ip": "192.168.1.23"})
    tags = dict((await one(source, settings)).tags)
    assert tags == {"net.src.hostname": "host-23.local", "host.hostname": "host-a0.local"}


async def test_reverse_dns_real_resolver_caches_names() -> None:
    expected = socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)[0]
    resolver = pipeline([{"type": "reverse_dns", "scopes": ["loopback"]}])
    events = [event("x", id=str(i), attributes={"net.src_ip": "127.0.0.1"}) for i in range(3)]
    result = await resolver.run(events)
    assert {e.tags["net.src.hostname"] for e in result.events} == {expected}
    processor = resolver.processors[0]
    assert isinstance(processor, ReverseDns)
    assert processor.lookups == 1
    await resolver.run([event("x", attributes={"net.src_ip": "127.0.0.1"})])
    assert processor.lookups == 1


async def test_reverse_dns_timeout_is_cached_as_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def slow_getnameinfo(*args: object) -> tuple[str, str]:
        await asyncio.sleep(5)
        return ("never", "0")

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getnameinfo", slow_getnameinfo)
    resolver = pipeline([{"type": "reverse_dns", "timeout_s": 0.05, "scopes": ["private"]}])
    processor = resolver.processors[0]
    assert isinstance(processor, ReverseDns)
    started = loop.time()
    result = await resolver.run([event("x", attributes={"net.src_ip": "10.9.9.9"})])
    assert loop.time() - started < 1
    assert "net.src.hostname" not in result.events[0].tags
    assert (processor.lookups, processor.failures) == (1, 1)
    await resolver.run([event("x", attributes={"net.src_ip": "10.9.9.9"})])
    assert processor.lookups == 1


async def test_reverse_dns_skips_unwanted_scopes_and_caps_lookups() -> None:
    resolver = pipeline(
        [{"type": "reverse_dns", "scopes": ["loopback"], "max_lookups_per_batch": 0}]
    )
    processor = resolver.processors[0]
    assert isinstance(processor, ReverseDns)
    await resolver.run([event("x", attributes={"net.src_ip": "8.8.8.8"})])
    await resolver.run([event("x", attributes={"net.src_ip": "127.0.0.1"})])
    assert processor.lookups == 0


def test_reverse_dns_refuses_unknown_scopes_and_modes() -> None:
    with pytest.raises(ConfigError, match=r"processors\.0\.scopes: .*galaxy"):
        pipeline([{"type": "reverse_dns", "scopes": ["galaxy"]}])
    with pytest.raises(ConfigError, match=r"processors\.0\.mode: "):
        pipeline([{"type": "reverse_dns", "mode": "psychic"}])
