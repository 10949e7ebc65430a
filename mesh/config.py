"""Typed service configuration: one YAML file per service, overridden by EDGEBOT_* env vars.

Environment overrides name a key path with ``__`` between levels. The global prefix
``EDGEBOT_`` reaches only the sections every service shares (server, tls, auth, logging,
tracing); a service prefix such as ``EDGEBOT_INGEST_`` reaches any key of that service and
wins: ``EDGEBOT_LOGGING__LEVEL=DEBUG``, ``EDGEBOT_STORAGE_SQLITE__PATH=/data/events.db``,
``EDGEBOT_INGEST_PIPELINE__ADDRESSES='["pipeline:50052"]'``.
Values that look like JSON lists or objects are parsed as JSON.

The original services' variables (``MOTHERSHIP_DB_DSN``, ``NATS_URL``, ...) are accepted as
deprecated aliases (mesh.env_aliases); they apply before the EDGEBOT_* overrides, so
EDGEBOT_* wins, and each leaves a notice that ``log_env_notices`` logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic_core import to_jsonable_python

from mesh.env_aliases import AliasError, AppliedAliases, apply_aliases

log = logging.getLogger(__name__)
GLOBAL_ENV_PREFIX = "EDGEBOT_"
ENV_PATH_SEPARATOR = "__"
# Keys whose values are never repeated in a configuration error.
SECRET_KEY_WORDS = ("password", "secret", "token", "api_key", "apikey", "dsn", "credential")
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][\w+.-]*://)"
    r"(?:(?P<user>[^:/@\s'\"]*):(?P<password>[^@/\s'\"]*)@)?"
    r"(?P<rest>[^\s'\"?#]*)(?P<query>\?[^\s'\"#]*)?"
)


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the key and the reason."""


class Section(BaseModel):
    """Base for every configuration section: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="mTLS gRPC port; 0 picks a free port.")
    health_port: int | None = Field(
        0,
        ge=0,
        le=65535,
        description="Plaintext port serving only grpc.health.v1 (Kubernetes probes); "
        "null disables it, 0 picks a free port.",
    )
    metrics_port: int | None = Field(
        0, ge=0, le=65535, description="Prometheus exposition port; null disables it."
    )
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Max gRPC message.")
    max_concurrent_streams: int = Field(
        256,
        ge=1,
        description="Streams (calls) one connection may have open at once (HTTP/2 "
        "SETTINGS_MAX_CONCURRENT_STREAMS); a client's further calls wait for a free one.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Connections accepted at once on the gRPC port; further ones are closed "
        "at accept. Keep it below the process's open-file limit (ulimit -n).",
    )
    handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection that has not finished its TLS and HTTP/2 handshake by "
        "then is closed (a client that connects and sends nothing holds no socket for long).",
    )
    max_connection_idle_s: float | None = Field(
        600.0,
        gt=0,
        description="Close a connection that has had no call open for this long (clients "
        "reconnect on their next call); null keeps idle connections.",
    )
    keepalive_time_s: float = Field(30.0, gt=0, description="Server keepalive ping interval.")
    keepalive_timeout_s: float = Field(10.0, gt=0, description="Keepalive ack timeout.")
    max_connection_age_s: float | None = Field(
        None, gt=0, description="Close connections after this age so long streams rebalance."
    )
    grace_period_s: float = Field(10.0, ge=0, description="Drain time on SIGTERM/SIGINT.")


class TlsConfig(Section):
    enabled: bool = Field(
        True, description="mTLS on. Disabling it is a logged, local-development-only opt-in."
    )
    ca_file: Path | None = Field(None, description="CA bundle that signs peers' certificates.")
    cert_file: Path | None = Field(None, description="This process's certificate (PEM).")
    key_file: Path | None = Field(None, description="This process's private key (PEM).")

    def require_files(self, section: str) -> tuple[Path, Path, Path]:
        missing = [
            name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name) is None
        ]
        if missing:
            raise ConfigError(f"{section}.{missing[0]}: required when {section}.enabled is true")
        assert self.ca_file
        assert self.cert_file
        assert self.key_file
        for name, path in (
            ("ca_file", self.ca_file),
            ("cert_file", self.cert_file),
            ("key_file", self.key_file),
        ):
            if not path.is_file():
                raise ConfigError(f"{section}.{name}: file not found: {path}")
        return self.ca_file, self.cert_file, self.key_file


class AuthConfig(Section):
    operator_tokens_file: Path | None = Field(
        None,
        description="File with one operator bearer token per line; callers presenting one "
        "in 'authorization: Bearer <token>' act as an operator.",
    )


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a TTY, JSON otherwise."
    )


class TracingConfig(Section):
    enabled: bool = Field(True, description="Create spans and propagate W3C trace context.")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC collector address; spans are exported only when set."
    )


class ClientConfig(Section):
    """How a service reaches another one."""

    addresses: list[str] = Field(
        default_factory=list, description="host:port list; several are balanced round-robin."
    )
    timeout_s: float = Field(10.0, gt=0, description="Deadline of each call.")
    tls_server_name: str | None = Field(
        None,
        description="Name the servers' certificates must carry; default: the host of the "
        "first address.",
    )


class ServiceConfig(Section):
    """Sections every service shares."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    _env_notices: list[str] = PrivateAttr(default_factory=list)

    @property
    def env_notices(self) -> list[str]:
        """Deprecation notices of the old environment variables this configuration used."""
        return list(self._env_notices)


def log_env_notices(config: ServiceConfig) -> None:
    for notice in config.env_notices:
        log.warning(notice, extra={"deprecated_env": notice.split(" ", 1)[0]})


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def load_config(
    model: type[ConfigT],
    path: Path | None,
    service: str,
    environ: Mapping[str, str] | None = None,
) -> ConfigT:
    """Read ``path`` (if given), apply env overrides, validate; raise ConfigError on misuse."""
    data = _read_yaml(path)
    env = os.environ if environ is None else environ
    shared = set(ServiceConfig.model_fields) & set(model.model_fields)
    scopes = (
        (GLOBAL_ENV_PREFIX, shared),
        (f"{GLOBAL_ENV_PREFIX}{service.upper()}_", set(model.model_fields)),
    )
    overrides = [
        override for prefix, known in scopes for override in _env_overrides(env, prefix, known)
    ]
    try:
        aliases = apply_aliases(
            data,
            env,
            service,
            set(model.model_fields),
            lambda key_path: _default_at(model, key_path),
            [key_path for key_path, _ in overrides],
        )
    except AliasError as exc:
        raise ConfigError(f"invalid environment: {exc}") from None
    for key_path, value in overrides:
        _set_path(data, key_path, value)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, aliases)) from None
    if isinstance(config, ServiceConfig):
        config._env_notices = aliases.notices
    return config


def _default_at(model: type[BaseModel], key_path: tuple[str, ...]) -> Any:
    """The model's default at ``key_path`` as plain data, or None."""
    field = model.model_fields.get(key_path[0])
    if field is None:
        return None
    node: Any = to_jsonable_python(field.get_default(call_default_factory=True))
    for key in key_path[1:]:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _env_overrides(
    env: Mapping[str, str], prefix: str, known: set[str]
) -> list[tuple[list[str], Any]]:
    overrides = []
    for name, raw in sorted(env.items()):
        if not name.startswith(prefix):
            continue
        key_path = [part.lower() for part in name[len(prefix) :].split(ENV_PATH_SEPARATOR)]
        if key_path[0] in known:
            overrides.append((key_path, _parse_env_value(raw)))
    return overrides


def _parse_env_value(raw: str) -> Any:
    stripped = raw.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    if stripped.lower() in ("null", "none", "~"):
        return None
    return raw


def _set_path(data: dict[str, Any], key_path: list[str], value: Any) -> None:
    node = data
    for key in key_path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[key_path[-1]] = value


def redact_secrets(text: str) -> str:
    """``text`` with every URL's password and query string hidden (either may hold a key)."""

    def hide(match: re.Match[str]) -> str:
        user = f"{match['user']}:***@" if match["password"] is not None else ""
        query = "?***" if match["query"] else ""
        return f"{match['scheme']}{user}{match['rest']}{query}"

    return _URL.sub(hide, text)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_KEY_WORDS) and not lowered.endswith(
        ("_file", "_env")
    )


def mask_secrets(value: Any, key: str = "") -> Any:
    """``value`` (a config mapping, list or leaf under ``key``) with every secret as ``***``
    and URL passwords and query strings hidden in the rest."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(item, key) for item in value]
    if is_secret_key(key) and value:
        return "***"
    return redact_secrets(value) if isinstance(value, str) else value


def _describe(
    exc: ValidationError, path: Path | None, aliases: AppliedAliases | None = None
) -> str:
    where = f" in {path}" if path else ""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        origin = _alias_origin(key, aliases)
        if origin:
            key += f" (set by {origin})"
        reason = error["msg"]
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        value = mask_secrets(error.get("input"), str(error["loc"][-1]) if error["loc"] else "")
        shown = "" if error["type"] in ("extra_forbidden", "missing") else f" (got {value!r})"
        problems.append(redact_secrets(f"{key}: {reason}{shown}"))
    return f"invalid configuration{where}: " + "; ".join(problems)


def _alias_origin(key: str, aliases: AppliedAliases | None) -> str:
    if aliases is None:
        return ""
    for prefix, name in aliases.origins.items():
        if key == prefix or key.startswith(prefix + "."):
            return name
    return ""
