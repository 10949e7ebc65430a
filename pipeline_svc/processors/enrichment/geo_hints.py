"""GeoHints: a configured CIDR table -> site/region/location tags, plus address scope.

Longest prefix wins. A MaxMind database is used for public addresses only when a path is
configured and the optional 'maxminddb' package is installed (it is not a dependency).
"""

from __future__ import annotations

import importlib
import ipaddress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register
from pipeline_svc.processors.enrichment.addresses import (
    Address,
    AddressReader,
    IpAddress,
    scope,
)

_Hints = tuple[dict[str, str], dict[str, str]]


class GeoNetwork(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cidr: str = Field(description="e.g. '10.20.0.0/16'.")
    site: str | None = None
    region: str | None = None
    country: str | None = None
    city: str | None = None
    location: str | None = Field(None, description="'lat,lon'.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags, as given.")

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"not a network: {exc}") from None
        return value

    def hints(self) -> dict[str, str]:
        fields = {"site": self.site, "region": self.region, "country": self.country}
        fields |= {"city": self.city, "location": self.location}
        return {key: value for key, value in fields.items() if value is not None}


class GeoHintsSettings(Settings):
    address_keys: list[str] = Field(
        default_factory=lambda: ["net.src_ip", "net.dst_ip"],
        description="Attributes holding addresses; 'net.src_ip' tags go under 'net.src.'.",
    )
    use_host: bool = Field(True, description="Also look at Event.host when it is an address.")
    networks: list[GeoNetwork] = Field(default_factory=list)
    scope_tags: bool = Field(True, description="Tag '<prefix>.scope' (private, public, ...).")
    maxmind_db: Path | None = Field(None, description="GeoLite2/GeoIP2 City .mmdb file.")
    cache_entries: int = Field(65_536, ge=0, description="Addresses remembered.")


class _MaxMind:
    def __init__(self, path: Path) -> None:
        try:
            module: Any = importlib.import_module("maxminddb")
        except ImportError:
            raise ConfigError(
                "maxmind_db: reading it needs the optional 'maxminddb' package"
            ) from None
        if not path.is_file():
            raise ConfigError(f"maxmind_db: file not found: {path}")
        self.reader = module.open_database(str(path))

    def hints(self, ip: IpAddress) -> dict[str, str]:
        record = self.reader.get(str(ip)) or {}
        hints = {}
        country = record.get("country", {}).get("iso_code")
        city = record.get("city", {}).get("names", {}).get("en")
        where = record.get("location", {})
        if country:
            hints["country"] = str(country)
        if city:
            hints["city"] = str(city)
        if "latitude" in where and "longitude" in where:
            hints["location"] = f"{where['latitude']},{where['longitude']}"
        return hints


@register
class GeoHints(Processor):
    type_name = "geo_hints"
    stage = "enrichment"
    settings_model = GeoHintsSettings
    settings: GeoHintsSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        s = self.settings
        self.reader = AddressReader(s.address_keys, s.use_host, s.cache_entries)
        table = [(ipaddress.ip_network(n.cidr, strict=False), n) for n in s.networks]
        self.table = sorted(table, key=lambda entry: -entry[0].prefixlen)
        self.maxmind = _MaxMind(s.maxmind_db) if s.maxmind_db is not None else None
        self._hints: dict[IpAddress, _Hints] = {}

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            changed = False
            for address in self.reader.addresses(item.event):
                changed = self._tag(item.event, address) or changed
            outcome.modified += changed
        return outcome

    def _tag(self, event: event_pb2.Event, address: Address) -> bool:
        relative, absolute = self._hints_for(address.ip)
        tags = event.tags
        for key, value in relative.items():
            tags[f"{address.prefix}.{key}"] = value
        for key, value in absolute.items():
            tags[key] = value
        return bool(relative or absolute)

    def _hints_for(self, ip: IpAddress) -> _Hints:
        hints = self._hints.get(ip)
        if hints is None:
            hints = self._lookup(ip)
            if len(self._hints) >= self.settings.cache_entries:
                self._hints.clear()
            if self.settings.cache_entries:
                self._hints[ip] = hints
        return hints

    def _lookup(self, ip: IpAddress) -> _Hints:
        """(tags under the address's prefix, tags as configured)."""
        relative: dict[str, str] = {}
        where = scope(ip)
        if self.settings.scope_tags:
            relative["scope"] = where
        network = next((n for net, n in self.table if ip in net), None)
        if network is not None:
            return relative | network.hints(), network.tags
        if self.maxmind is not None and where == "public":
            relative |= self.maxmind.hints(ip)
        return relative, {}
