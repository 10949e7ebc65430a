"""HashFields: keyed pseudonyms (HMAC-SHA256) for identifier fields.

Stable across runs and replicas for one secret, so events of one user still correlate;
without the secret nobody can confirm a guess by hashing candidate values.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from pathlib import Path

from pydantic import Field, PrivateAttr, model_validator

from gen.edgebot.v1 import event_pb2
from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register
from pipeline_svc.processors.redaction.scanner import add_counts


class HashFieldsSettings(Settings):
    fields: list[str] = Field(
        default_factory=lambda: ["user", "user.name", "net.src_ip"],
        description="Attribute keys whose values are replaced by pseudonyms.",
    )
    hash_host: bool = Field(False, description="Also pseudonymise Event.host.")
    lowercase_fields: list[str] = Field(
        default_factory=lambda: ["host", "hostname", "user.email", "email"],
        description="Keys compared case-insensitively (emails always are).",
    )
    secret_file: Path | None = Field(None, description="File holding the HMAC secret.")
    secret_env: str | None = Field(
        "EDGEBOT_HASH_SECRET", description="Environment variable holding the secret."
    )
    min_secret_bytes: int = Field(16, ge=8, description="Shorter secrets are refused.")
    digest_chars: int = Field(16, ge=8, le=64, description="Hex characters kept.")
    prefix: str = Field("h:", description="Marks a pseudonym.")
    replace_in_message: bool = Field(
        True, description="Replace whole-word occurrences of hashed values in the message."
    )
    min_replace_chars: int = Field(3, ge=1, description="Shorter values are not replaced.")
    _secret: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _load_secret(self) -> HashFieldsSettings:
        self._secret = self._read_secret()
        if len(self._secret) < self.min_secret_bytes:
            raise ValueError(
                f"the hash secret must be at least {self.min_secret_bytes} bytes "
                "(secret_file or secret_env)"
            )
        return self

    def _read_secret(self) -> bytes:
        if self.secret_file is not None:
            try:
                return self.secret_file.read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"secret_file: cannot read: {exc.strerror}") from None
        if self.secret_env:
            return os.environ.get(self.secret_env, "").strip().encode()
        return b""

    @property
    def secret(self) -> bytes:
        return self._secret


def normalise(value: str, lowercase: bool) -> str:
    """One spelling per identifier: trimmed, IPs compressed, emails/hostnames lowercased."""
    text = value.strip()
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        pass
    if lowercase or "@" in text:
        return text.lower().rstrip(".")
    return text


@register
class HashFields(Processor):
    type_name = "hash_fields"
    stage = "redaction"
    settings_model = HashFieldsSettings
    settings: HashFieldsSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.lowercase = frozenset(self.settings.lowercase_fields)
        prefix, width = re.escape(self.settings.prefix), self.settings.digest_chars
        self._already = re.compile(rf"{prefix}[0-9a-f]{{{width}}}")

    def pseudonym(self, value: str, key: str) -> str:
        normal = normalise(value, key in self.lowercase)
        digest = hmac.new(self.settings.secret, normal.encode(), hashlib.sha256).hexdigest()
        return self.settings.prefix + digest[: self.settings.digest_chars]

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            replaced = self._hash_event(item.event)
            if replaced:
                outcome.modified += 1
                if self.settings.replace_in_message:
                    self._replace_in_message(item.event, replaced)
                add_counts(item.event, {"hashed": len(replaced)})
        return outcome

    def _hash_event(self, event: event_pb2.Event) -> dict[str, str]:
        replaced: dict[str, str] = {}
        attributes = event.attributes
        for key in self.settings.fields:
            value = attributes.get(key)
            if value and not self._already.fullmatch(value):
                replaced[value] = attributes[key] = self.pseudonym(value, key)
        if self.settings.hash_host and event.host and not self._already.fullmatch(event.host):
            replaced[event.host] = event.host = self.pseudonym(event.host, "host")
        return replaced

    def _replace_in_message(self, event: event_pb2.Event, replaced: dict[str, str]) -> None:
        message = event.message
        for original, pseudonym in replaced.items():
            word = original.strip()
            if len(word) >= self.settings.min_replace_chars and word in message:
                boundary = rf"(?<![\w.@-]){re.escape(word)}(?![\w@-]|\.\w)"
                message = re.sub(boundary, pseudonym.replace("\\", r"\\"), message)
        event.message = message
