"""ReverseDNS: '<prefix>.hostname' tags from PTR lookups, cached, time-boxed, bounded.

``mode: real`` asks the system resolver (getnameinfo in the loop's executor) for the
addresses a batch has not seen recently, with a per-lookup timeout and a per-batch cap;
``mode: fake`` derives 'host-<last octet>.local' for tests and demos, without any I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Literal

from pydantic import Field, field_validator

from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register
from pipeline_svc.processors.enrichment.addresses import SCOPES, AddressReader, IpAddress, scope


class ReverseDnsSettings(Settings):
    mode: Literal["real", "fake"] = "real"
    address_keys: list[str] = Field(
        default_factory=lambda: ["net.src_ip"],
        description="Attributes holding addresses; 'net.src_ip' -> tag 'net.src.hostname'.",
    )
    use_host: bool = Field(False, description="Also resolve Event.host when it is an address.")
    scopes: list[str] = Field(
        default_factory=lambda: ["private", "loopback", "link_local", "cgnat", "public"],
        description="Address scopes looked up (drop 'public' to keep lookups on-site).",
    )
    timeout_s: float = Field(1.0, gt=0, description="Per lookup.")

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scope(s) {unknown}; known: {', '.join(SCOPES)}")
        return value

    cache_ttl_s: float = Field(3600.0, ge=0, description="How long a name is reused.")
    negative_ttl_s: float = Field(300.0, ge=0, description="How long a failure is reused.")
    cache_entries: int = Field(10_000, ge=1, description="Addresses remembered.")
    max_lookups_per_batch: int = Field(256, ge=0, description="New lookups per batch.")
    concurrency: int = Field(16, ge=1, description="Lookups in flight at once.")


def fake_name(ip: IpAddress) -> str:
    """'host-<last octet>.local' ('host-<last hextet>.local' for IPv6)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return f"host-{ip.packed[-1]}.local"
    return f"host-{ip.exploded.rsplit(':', 1)[1].lstrip('0') or '0'}.local"


class _Cache:
    """address -> (name or None, expiry on the monotonic clock)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.items: dict[IpAddress, tuple[str | None, float]] = {}

    def get(self, ip: IpAddress, now: float) -> tuple[bool, str | None]:
        found = self.items.get(ip)
        if found is None or found[1] <= now:
            return False, None
        return True, found[0]

    def put(self, ip: IpAddress, name: str | None, expires: float) -> None:
        if len(self.items) >= self.entries:
            now = time.monotonic()
            self.items = {k: v for k, v in self.items.items() if v[1] > now}
            if len(self.items) >= self.entries:
                self.items.clear()
        self.items[ip] = (name, expires)


@register
class ReverseDns(Processor):
    type_name = "reverse_dns"
    stage = "enrichment"
    settings_model = ReverseDnsSettings
    settings: ReverseDnsSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        s = self.settings
        self.reader = AddressReader(s.address_keys, s.use_host, s.cache_entries)
        self.scopes = frozenset(s.scopes)
        self.cache = _Cache(s.cache_entries)
        self.lookups = self.failures = 0

    def process(self, items: list[Item]) -> Outcome:
        """Without I/O: fake names, or in real mode whatever the cache already knows."""
        return self._annotate(items)

    async def process_async(self, items: list[Item]) -> Outcome:
        if self.settings.mode == "real":
            await self._resolve_missing(items)
        return self._annotate(items)

    def _wanted(self, ip: IpAddress) -> bool:
        return scope(ip) in self.scopes

    def _annotate(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        now = time.monotonic()
        fake = self.settings.mode == "fake"
        for item in items:
            changed = False
            for address in self.reader.addresses(item.event):
                if not self._wanted(address.ip):
                    continue
                name = fake_name(address.ip) if fake else self.cache.get(address.ip, now)[1]
                if name:
                    item.event.tags[f"{address.prefix}.hostname"] = name
                    changed = True
            outcome.modified += changed
        return outcome

    async def _resolve_missing(self, items: list[Item]) -> None:
        now = time.monotonic()
        missing: dict[IpAddress, None] = {}
        for item in items:
            for address in self.reader.addresses(item.event):
                ip = address.ip
                if self._wanted(ip) and not self.cache.get(ip, now)[0]:
                    missing[ip] = None
        chosen = list(missing)[: self.settings.max_lookups_per_batch]
        if chosen:
            slots = asyncio.Semaphore(self.settings.concurrency)
            await asyncio.gather(*(self._resolve(ip, slots) for ip in chosen))

    async def _resolve(self, ip: IpAddress, slots: asyncio.Semaphore) -> None:
        s = self.settings
        async with slots:
            self.lookups += 1
            try:
                name = await asyncio.wait_for(_ptr(str(ip)), s.timeout_s)
            except (TimeoutError, OSError, UnicodeError):
                self.failures += 1
                self.cache.put(ip, None, time.monotonic() + s.negative_ttl_s)
                return
        self.cache.put(ip, name, time.monotonic() + s.cache_ttl_s)


async def _ptr(address: str) -> str:
    host, _ = await asyncio.get_running_loop().getnameinfo((address, 0), socket.NI_NAMEREQD)
    return host
