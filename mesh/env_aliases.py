"""The environment variables of the services EdgeBot replaces, accepted as deprecated aliases.

``ALIASES`` is data: one row per (old variable, what it sets in which services). load_config
applies the rows of the service it loads to the YAML data *before* the ``EDGEBOT_*``
overrides, so an ``EDGEBOT_*`` variable for the same key wins. Each old variable in use leaves
a notice naming its replacement; the service logs it once logging is set up, and
``edgebot config check`` prints it. Rows apply in table order, so a later row for the same key
wins (``TSDB_ENABLED=false`` after ``MOTHERSHIP_DB_DSN``). Adding an alias is adding a row.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

SHARED_SECTIONS = frozenset({"server", "tls", "auth", "logging", "tracing"})
MOTHERSHIP = ("ingest", "pipeline", "storage", "anomaly")
DsnPart = Literal["host", "port", "database", "user", "password"]
Converter = Callable[[str], Any]
DefaultAt = Callable[[tuple[str, ...]], Any]
"""The model's default value at a key path (None when there is none)."""


class AliasError(ValueError):
    """An alias has a value EdgeBot cannot use; the message says why (not the value if secret)."""


# Converters --------------------------------------------------------------------------------
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def text(raw: str) -> str:
    return raw.strip()


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise AliasError(f"not a boolean (true/false, 1/0, yes/no, on/off): {raw!r}")


def log_level(raw: str) -> str:
    value = raw.strip().upper()
    return {"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR"}.get(value, value)


def url_list(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def port(raw: str) -> str:
    value = raw.strip()
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise AliasError(f"not a TCP port: {raw!r}")
    return value


def constant(value: Any) -> Converter:
    """The same value whatever the variable holds (it only has to be set)."""
    return lambda raw: value


def choice(when_true: Any, when_false: Any) -> Converter:
    return lambda raw: when_true if boolean(raw) else when_false


# Targets -----------------------------------------------------------------------------------
class Target(Protocol):
    @property
    def key_path(self) -> tuple[str, ...]:
        """The key path the target changes (an EDGEBOT_* override of it wins)."""

    def apply(self, data: dict[str, Any], raw: str, name: str, default_at: DefaultAt) -> None:
        """Change ``data`` (the YAML mapping) as the variable says."""

    def describe(self) -> str:
        """The EdgeBot key, in words."""

    def replacement(self, service: str) -> str:
        """What to set instead."""


def _env_name(service: str, path: Sequence[str]) -> str:
    prefix = "EDGEBOT_" if path[0] in SHARED_SECTIONS else f"EDGEBOT_{service.upper()}_"
    return prefix + "__".join(part.upper() for part in path)


def _node(data: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
    node = data
    for key in path:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    return node


def _current(data: dict[str, Any], path: Sequence[str], default_at: DefaultAt) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return copy.deepcopy(default_at(tuple(path)))
        node = node[key]
    return node


@dataclass(frozen=True)
class SetKey:
    """Set one key to the converted value."""

    key_path: tuple[str, ...]
    convert: Converter = text
    shown_value: str = ""
    """The value to show in the notice when the converter does not pass the text through."""

    def apply(self, data: dict[str, Any], raw: str, name: str, default_at: DefaultAt) -> None:
        _node(data, self.key_path[:-1])[self.key_path[-1]] = self.convert(raw)

    def describe(self) -> str:
        return ".".join(self.key_path)

    def replacement(self, service: str) -> str:
        name = _env_name(service, self.key_path)
        return f"{name}={self.shown_value}" if self.shown_value else name


@dataclass(frozen=True)
class SetDsnPart:
    """Replace one part (host, port, database, user, password) of a libpq URI key."""

    key_path: tuple[str, ...]
    part: DsnPart
    convert: Converter = text

    def apply(self, data: dict[str, Any], raw: str, name: str, default_at: DefaultAt) -> None:
        dsn = _current(data, self.key_path, default_at)
        if not isinstance(dsn, str):
            raise AliasError(f"{self.describe()} is not a connection URI")
        _node(data, self.key_path[:-1])[self.key_path[-1]] = replace_dsn_part(
            dsn, self.part, str(self.convert(raw))
        )

    def describe(self) -> str:
        return f"{'.'.join(self.key_path)} ({self.part})"

    def replacement(self, service: str) -> str:
        return f"{_env_name(service, self.key_path)} (a whole URI)"


def replace_dsn_part(dsn: str, part: DsnPart, value: str) -> str:
    parts = urlsplit(dsn)
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    host = parts.hostname or ""
    port_text = str(parts.port) if parts.port else ""
    database = parts.path.lstrip("/")
    if part == "host":
        host = value
    elif part == "port":
        port_text = value
    elif part == "database":
        database = quote(value, safe="")
    elif part == "user":
        user = value
    else:
        password = value
    credentials = quote(user, safe="")
    if password:
        credentials += ":" + quote(password, safe="")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    netloc = (credentials + "@" if credentials else "") + host
    if port_text:
        netloc += ":" + port_text
    return urlunsplit((parts.scheme or "postgresql", netloc, "/" + database, parts.query, ""))


@dataclass(frozen=True)
class SetProcessorField:
    """Set a field of every entry of one type in a list of typed entries
    (``pipeline.processors`` by default, or storage's ``sinks``).

    When no entry of that type is configured: ``missing="insert"`` adds one (before
    ``quality_validation``, which stays last), ``"error"`` refuses the start, ``"ignore"``
    does nothing; ``missing_if`` limits that to one value (otherwise nothing happens).
    Entries that already set one of ``unless_set`` are left alone.
    """

    processor_type: str
    field_name: str
    convert: Converter = text
    missing: Literal["insert", "error", "ignore"] = "ignore"
    missing_if: Any = None
    unless_set: tuple[str, ...] = ()
    key_path: tuple[str, ...] = ("pipeline", "processors")

    def apply(self, data: dict[str, Any], raw: str, name: str, default_at: DefaultAt) -> None:
        value = self.convert(raw)
        processors = _current(data, self.key_path, default_at)
        if not isinstance(processors, list):
            raise AliasError(f"{'.'.join(self.key_path)} is not a list")
        entries = [
            p for p in processors if isinstance(p, dict) and p.get("type") == self.processor_type
        ]
        for entry in entries:
            if not any(entry.get(key) for key in self.unless_set):
                entry[self.field_name] = value
        if not entries and (self.missing_if is None or value == self.missing_if):
            if self.missing == "error":
                raise AliasError(
                    f"no {self.processor_type!r} processor is configured in "
                    f"{'.'.join(self.key_path)}; add one there (it needs settings the "
                    "variable cannot give)"
                )
            if self.missing == "insert":
                position = _insert_position(processors)
                processors.insert(position, {"type": self.processor_type, self.field_name: value})
        _node(data, self.key_path[:-1])[self.key_path[-1]] = processors

    def describe(self) -> str:
        return f"{'.'.join(self.key_path)}[type={self.processor_type}].{self.field_name}"

    def replacement(self, service: str) -> str:
        where = ".".join(self.key_path)
        return f"{self.field_name} of the {self.processor_type} entry of {where}"


def _insert_position(processors: list[Any]) -> int:
    for position, entry in enumerate(processors):
        if isinstance(entry, dict) and entry.get("type") == "quality_validation":
            return position
    return len(processors)


@dataclass(frozen=True)
class Unmapped:
    """A variable EdgeBot recognises but cannot map in this build; the hint says what to do."""

    hint: str
    key_path: tuple[str, ...] = ()

    def apply(self, data: dict[str, Any], raw: str, name: str, default_at: DefaultAt) -> None:
        return None

    def describe(self) -> str:
        return "nothing in this build"

    def replacement(self, service: str) -> str:
        return self.hint


@dataclass(frozen=True)
class EnvAlias:
    name: str
    services: tuple[str, ...]
    target: Target


def loki_field(
    field_name: str, convert: Converter = text, missing_if: Any = None
) -> SetProcessorField:
    """A field of the ``loki`` entry of storage's ``sinks``, added when there is none."""
    return SetProcessorField(
        "loki", field_name, convert, missing="insert", missing_if=missing_if, key_path=("sinks",)
    )


ALIASES: tuple[EnvAlias, ...] = (
    # The original mothership.
    EnvAlias("MOTHERSHIP_DB_DSN", ("storage",), SetKey(("postgres", "dsn"))),
    EnvAlias(
        "MOTHERSHIP_DB_DSN",
        ("storage",),
        SetKey(("storage", "primary"), constant("postgres"), "postgres"),
    ),
    EnvAlias("MOTHERSHIP_LOG_LEVEL", MOTHERSHIP, SetKey(("logging", "level"), log_level)),
    EnvAlias(
        "MOTHERSHIP_LLM_ENABLED",
        ("pipeline",),
        SetProcessorField("llm_enrichment", "enabled", boolean, missing="error", missing_if=True),
    ),
    EnvAlias(
        "MOTHERSHIP_LLM_API_KEY",
        ("pipeline",),
        # The key stays in the environment: the stage is told which variable to read.
        SetProcessorField(
            "llm_enrichment",
            "api_key_env",
            constant("MOTHERSHIP_LLM_API_KEY"),
            unless_set=("api_key_file", "api_key_env"),
        ),
    ),
    EnvAlias(
        "TSDB_ENABLED",
        ("storage",),
        SetKey(("storage", "primary"), choice("postgres", "sqlite"), "postgres|sqlite"),
    ),
    EnvAlias("TSDB_HOST", ("storage",), SetDsnPart(("postgres", "dsn"), "host")),
    EnvAlias("TSDB_PORT", ("storage",), SetDsnPart(("postgres", "dsn"), "port", port)),
    EnvAlias("TSDB_DATABASE", ("storage",), SetDsnPart(("postgres", "dsn"), "database")),
    EnvAlias("TSDB_USERNAME", ("storage",), SetDsnPart(("postgres", "dsn"), "user")),
    EnvAlias("TSDB_PASSWORD", ("storage",), SetDsnPart(("postgres", "dsn"), "password")),
    # The original mothership's Loki exporter: one loki entry in storage's sinks.
    EnvAlias("LOKI_ENABLED", ("storage",), loki_field("enabled", boolean, missing_if=True)),
    EnvAlias("LOKI_URL", ("storage",), loki_field("url")),
    EnvAlias("LOKI_TENANT_ID", ("storage",), loki_field("tenant")),
    EnvAlias("LOKI_USERNAME", ("storage",), loki_field("username")),
    # The password stays in the environment: the sink reads the variable it names.
    EnvAlias("LOKI_PASSWORD", ("storage",), loki_field("password_env", constant("LOKI_PASSWORD"))),
    EnvAlias("LOKI_BATCH_SIZE", ("storage",), loki_field("batch_max_events", int)),
    EnvAlias("LOKI_BATCH_TIMEOUT_SECONDS", ("storage",), loki_field("batch_wait_s", float)),
    # The original ETL service (NATS events.raw consumer, TimescaleDB writer, enrichment).
    # NATS_URL names where the ETL service consumed; it does not switch the input on.
    EnvAlias("NATS_URL", ("ingest",), SetKey(("nats", "servers"), url_list)),
    EnvAlias("PG_HOST", ("storage",), SetDsnPart(("postgres", "dsn"), "host")),
    EnvAlias("PG_PORT", ("storage",), SetDsnPart(("postgres", "dsn"), "port", port)),
    EnvAlias("PG_DB", ("storage",), SetDsnPart(("postgres", "dsn"), "database")),
    EnvAlias("PG_USER", ("storage",), SetDsnPart(("postgres", "dsn"), "user")),
    EnvAlias("PG_PASSWORD", ("storage",), SetDsnPart(("postgres", "dsn"), "password")),
    EnvAlias(
        "AF_ENV",
        ("pipeline",),
        SetProcessorField("site_environment", "environment", missing="insert"),
    ),
    EnvAlias(
        "AF_FAKE_RDNS",
        ("pipeline",),
        SetProcessorField(
            "reverse_dns", "mode", choice("fake", "real"), missing="insert", missing_if="fake"
        ),
    ),
)  # fmt: skip


@dataclass
class AppliedAliases:
    """What the aliases did to one service's configuration."""

    notices: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    """Dotted key path → the variable that set it (for error messages)."""


def apply_aliases(
    data: dict[str, Any],
    environ: Mapping[str, str],
    service: str,
    known_sections: set[str],
    default_at: DefaultAt,
    overridden: Sequence[Sequence[str]],
    aliases: Sequence[EnvAlias] = ALIASES,
) -> AppliedAliases:
    """Apply every alias set in ``environ`` that reaches ``service``; raise AliasError."""
    applied = AppliedAliases()
    used: dict[str, list[Target]] = {}
    for alias in aliases:
        raw = environ.get(alias.name)
        if raw is None or service not in alias.services:
            continue
        target = alias.target
        if target.key_path and target.key_path[0] not in known_sections:
            continue
        try:
            target.apply(data, raw, alias.name, default_at)
        except AliasError as exc:
            raise AliasError(f"{alias.name} (for {target.describe()}): {exc}") from None
        if target.key_path and not _is_overridden(target.key_path, overridden):
            applied.origins.setdefault(".".join(target.key_path), alias.name)
        used.setdefault(alias.name, []).append(target)
    for name, targets in used.items():
        applied.notices.append(_notice(name, targets, service, overridden))
    return applied


def _notice(
    name: str, targets: Sequence[Target], service: str, overridden: Sequence[Sequence[str]]
) -> str:
    if all(isinstance(t, Unmapped) for t in targets):
        return (
            f"{name} is a setting of the original services that this build cannot map; "
            f"it is ignored; configure {targets[0].replacement(service)} instead"
        )
    beaten = [t for t in targets if t.key_path and _is_overridden(t.key_path, overridden)]
    if len(beaten) == len(targets):
        return (
            f"{name} is deprecated and ignored: {beaten[0].replacement(service)} is set and "
            "wins; remove the old variable"
        )
    sets = ", ".join(t.describe() for t in targets)
    instead = " and ".join(t.replacement(service) for t in targets)
    notice = f"{name} is deprecated: it sets {service} {sets}; use {instead} instead"
    if beaten:
        won = ", ".join(t.describe() for t in beaten)
        notice += f" ({won} comes from the EDGEBOT_* variable that is also set)"
    return notice


def _is_overridden(key_path: Sequence[str], overridden: Sequence[Sequence[str]]) -> bool:
    """An EDGEBOT_* override of the key or of a section above it wins."""
    return any(tuple(key_path[: len(path)]) == tuple(path) for path in overridden)
