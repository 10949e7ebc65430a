"""The IP addresses of an event, with the tag prefix each one's enrichment goes under."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gen.edgebot.v1 import event_pb2

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SUFFIXES = ("_ip", ".ip", "_addr", ".addr", "_address", ".address")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
SCOPES = ("loopback", "link_local", "multicast", "private", "cgnat", "reserved", "public")


def tag_prefix(key: str) -> str:
    """'net.src_ip' -> 'net.src'; 'client.ip' -> 'client'; 'peer' -> 'peer'."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    return key


@dataclass(frozen=True)
class Address:
    prefix: str
    text: str
    ip: IpAddress


class AddressReader:
    """Finds addresses in configured attributes (and the host), parsing each text once."""

    def __init__(self, keys: list[str], use_host: bool, cache_entries: int) -> None:
        self.keys = [(key, tag_prefix(key)) for key in keys]
        self.use_host = use_host
        self.cache_entries = cache_entries
        self._parsed: dict[str, IpAddress | None] = {}

    def parse(self, text: str) -> IpAddress | None:
        if text in self._parsed:
            return self._parsed[text]
        try:
            ip: IpAddress | None = ipaddress.ip_address(text.strip())
        except ValueError:
            ip = None
        if len(self._parsed) >= self.cache_entries:
            self._parsed.clear()
        if self.cache_entries:
            self._parsed[text] = ip
        return ip

    def addresses(self, event: event_pb2.Event) -> list[Address]:
        found = []
        attributes = event.attributes
        for key, prefix in self.keys:
            text = attributes.get(key)
            if text:
                ip = self.parse(text)
                if ip is not None:
                    found.append(Address(prefix, text, ip))
        if self.use_host and event.host:
            ip = self.parse(event.host)
            if ip is not None:
                found.append(Address("host", event.host, ip))
        return found


def scope(ip: IpAddress) -> str:
    """loopback, link_local, multicast, private, cgnat, reserved or public."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "cgnat"
    if ip.is_reserved or ip.is_unspecified:
        return "reserved"
    return "public"
