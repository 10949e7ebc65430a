"""DropFields: remove attributes and tags whose key names a secret, at any depth."""

from __future__ import annotations

import fnmatch
import re

from google.protobuf.internal.containers import ScalarMap
from pydantic import Field, field_validator

from pipeline_svc.processors.base import Item, Outcome, Processor, Settings, register
from pipeline_svc.processors.redaction.scanner import add_counts

DEFAULT_NAMES = (
    "password", "passwd", "passphrase", "pwd", "secret", "client_secret", "token",
    "access_token", "refresh_token", "id_token", "auth_token", "api_key", "apikey",
    "x-api-key", "key", "private_key", "secret_key", "access_key", "aws_secret_access_key",
    "authorization", "proxy-authorization", "auth", "credentials", "cookie", "set-cookie",
    "session", "session_id", "sessionid",
)  # fmt: skip


def _normal(name: str) -> str:
    """'X-Api-Key', 'x_api_key' and 'xApiKey' all become 'xapikey'."""
    return name.lower().replace("-", "").replace("_", "")


class DropFieldsSettings(Settings):
    names: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NAMES),
        description="Key segments dropped wherever they appear in a dotted key "
        "(case, '-' and '_' ignored): 'db.password', 'http.headers.Authorization'.",
    )
    extra_names: list[str] = Field(default_factory=list, description="Added to 'names'.")
    globs: list[str] = Field(
        default_factory=list,
        description="Whole-key patterns, case-insensitive, e.g. 'vendor.*.pin'.",
    )
    keep: list[str] = Field(
        default_factory=list, description="Exact keys never dropped (e.g. 'auth.method')."
    )
    include_tags: bool = Field(True, description="Apply to tag keys as well.")
    drop_raw: bool = Field(True, description="Drop Event.raw, the unredacted original bytes.")
    record_counts: bool = Field(True, description="Write a redaction.dropped=<n> tag.")
    max_cached_keys: int = Field(
        65_536, ge=0, description="Key verdicts remembered (keys repeat; bounds odd input)."
    )

    @field_validator("names", "extra_names")
    @classmethod
    def _not_blank(cls, value: list[str]) -> list[str]:
        if any(not _normal(name) for name in value):
            raise ValueError("names must not be empty")
        return value


@register
class DropFields(Processor):
    type_name = "drop_fields"
    stage = "redaction"
    settings_model = DropFieldsSettings
    settings: DropFieldsSettings

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name, settings)
        self.names = frozenset(_normal(n) for n in self.settings.names + self.settings.extra_names)
        self.keep = frozenset(self.settings.keep)
        globs = [fnmatch.translate(g.lower()) for g in self.settings.globs]
        self.glob = re.compile("|".join(globs)) if globs else None
        self._verdicts: dict[str, bool] = {}

    def process(self, items: list[Item]) -> Outcome:
        outcome = Outcome()
        for item in items:
            event = item.event
            dropped = self._drop_from(event.attributes)
            if self.settings.include_tags and event.tags:
                dropped += self._drop_from(event.tags)
            if self.settings.drop_raw and event.HasField("raw"):
                event.ClearField("raw")
                dropped += 1
            if dropped:
                outcome.modified += 1
                if self.settings.record_counts:
                    add_counts(event, {"dropped": dropped})
        return outcome

    def _drop_from(self, values: ScalarMap[str, str]) -> int:
        verdicts = self._verdicts
        doomed = [key for key in values if verdicts.get(key, True) and self._sensitive(key)]
        for key in doomed:
            del values[key]
        return len(doomed)

    def _sensitive(self, key: str) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(key)
            if len(self._verdicts) < self.settings.max_cached_keys:
                self._verdicts[key] = verdict
        return verdict

    def _judge(self, key: str) -> bool:
        if key in self.keep or key.startswith("redaction."):
            return False
        if any(_normal(part) in self.names for part in key.split(".")):
            return True
        return self.glob is not None and self.glob.fullmatch(key.lower()) is not None
