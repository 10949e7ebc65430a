"""Runs a set of detectors over text: masking (MaskPatterns) or finding (SafetyValidator).

The settings here are shared by both processors, so a validator can be configured with
exactly the detectors the masker uses, or with more.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gen.edgebot.v1 import event_pb2
from pipeline_svc.processors.base import Settings
from pipeline_svc.processors.redaction.detectors import (
    BUILTIN,
    DEFAULT_DETECTORS,
    NUMERIC_RUN,
    ORDER,
    SECRET_GROUP,
    Detector,
)

COUNT_TAG_PREFIX = "redaction."
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SHORT_DIGITS_MAX = 8
"""No built-in detector finds anything in at most this many ASCII digits alone: cards,
SSNs, IBANs and national phone numbers need NUMERIC_RUN's 9+ characters, every other kind
a letter or a separator. Pids, ports and counters then skip the detectors and the caches
(their many values would only churn them)."""
_BUILTIN_DETECTORS = frozenset(d for group in BUILTIN.values() for d in group)


class CustomPattern(BaseModel):
    """A site-specific detector: a regex, optionally guarded by substrings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Kind reported in counts and reasons, e.g. 'employee_id'.")
    pattern: str = Field(description="Python regex; a group named 'secret' masks only itself.")
    replacement: str | None = Field(None, description="Default '[REDACTED:<name>]'.")
    ignore_case: bool = False
    prefilter: list[str] = Field(
        default_factory=list,
        description="Substrings of which one must occur before the regex runs (speed).",
    )

    @field_validator("name")
    @classmethod
    def _simple_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lowercase letters, digits and '_', at most 40")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regex: {exc}") from None
        return value

    def detector(self) -> Detector:
        flags = re.IGNORECASE if self.ignore_case else 0
        needles = tuple(n.lower() for n in self.prefilter) if self.ignore_case else ()
        exact = () if self.ignore_case else tuple(self.prefilter)
        name = self.name

        def prefilter(text: str, lower: str) -> bool:
            return any(n in text for n in exact) or any(n in lower for n in needles)

        return Detector(
            name,
            re.compile(self.pattern, flags),
            lambda match: name,
            prefilter if self.prefilter else None,
            self.replacement,
        )


class DetectorSettings(Settings):
    detectors: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DETECTORS),
        description=f"Built-in detectors to run; known: {', '.join(ORDER)}.",
    )
    mask_ip_addresses: bool = Field(False, description="Also run ipv4 and ipv6.")
    mask_mac_addresses: bool = Field(False, description="Also run mac.")
    custom: list[CustomPattern] = Field(default_factory=list)
    scan_tags: bool = Field(True, description="Scan tag values as well as attributes.")
    max_scan_chars: int = Field(
        65_536, ge=64, description="Longest text scanned; longer text is handled as oversize."
    )
    cache_entries: int = Field(
        8_192, ge=0, description="Short values remembered (attribute values repeat a lot)."
    )
    cache_max_chars: int = Field(80, ge=0, description="Longest value kept in that cache.")
    max_passes: int = Field(
        32,
        ge=1,
        le=256,
        description="Masking passes while a pass still finds something (a finding can hide "
        "a glued neighbour until it is masked); what is left after them is quarantined by "
        "the safety validator.",
    )

    @field_validator("detectors")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(BUILTIN))
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(ORDER)}")
        return value

    @model_validator(mode="after")
    def _custom_names_unique(self) -> DetectorSettings:
        names = [c.name for c in self.custom]
        if len(names) != len(set(names)) or set(names) & set(BUILTIN):
            raise ValueError("custom names must be unique and differ from built-in detectors")
        return self

    def chosen(self) -> list[str]:
        wanted = set(self.detectors)
        if self.mask_ip_addresses:
            wanted |= {"ipv4", "ipv6"}
        if self.mask_mac_addresses:
            wanted.add("mac")
        return [name for name in ORDER if name in wanted]

    def build(self) -> Scanner:
        detectors = [d for name in self.chosen() for d in BUILTIN[name]]
        detectors += [c.detector() for c in self.custom]
        return Scanner(detectors, self.cache_entries, self.cache_max_chars, self.max_passes)


Counts = dict[str, int]
_V = TypeVar("_V")
_NO_COUNTS: tuple[tuple[str, int], ...] = ()


class Scanner:
    """Masks or finds with an ordered detector list. Not thread-safe; one per processor."""

    def __init__(
        self,
        detectors: Sequence[Detector],
        cache_entries: int,
        cache_chars: int,
        max_passes: int = 32,
    ) -> None:
        self.detectors = tuple(detectors)
        self._max_passes = max_passes
        # Detectors needing a digit run go last, behind one NUMERIC_RUN search for all.
        self._plain = tuple((d.prefilter, d) for d in detectors if not d.numeric)
        self._numeric = tuple((d.prefilter, d) for d in detectors if d.numeric)
        self._cache_entries = cache_entries
        self._cache_chars = cache_chars
        self._mask_cache: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}
        self._find_cache: dict[str, frozenset[str]] = {}
        self._current: Detector = detectors[0] if detectors else _NOTHING
        self._counts: Counts = {}
        # A custom pattern may well match digits alone (an employee id of six digits).
        self._digits_clean = all(d in _BUILTIN_DETECTORS for d in self.detectors)

    def mask(self, text: str, counts: Counts, cache: bool = True) -> str:
        """``text`` with every validated finding replaced; adds to ``counts`` per kind.

        ``cache`` suits values that repeat (attributes); messages rarely do."""
        cached = self._mask_cache.get(text) if cache else None
        if cached is None:
            if self._short_digits(text):
                return text
            if not cache or len(text) > self._cache_chars:
                return self._mask(text, counts)
            found: Counts = {}
            cached = (self._mask(text, found), tuple(found.items()) or _NO_COUNTS)
            self._remember(self._mask_cache, text, cached)
        for kind, count in cached[1]:
            counts[kind] = counts.get(kind, 0) + count
        return cached[0]

    def find(self, text: str, cache: bool = True) -> frozenset[str]:
        """The kinds of the validated findings in ``text`` (empty when clean)."""
        cached = self._find_cache.get(text) if cache else None
        if cached is None:
            if self._short_digits(text):
                return _CLEAN
            if not cache or len(text) > self._cache_chars:
                return self._find(text)
            cached = self._find(text)
            self._remember(self._find_cache, text, cached)
        return cached

    def _short_digits(self, text: str) -> bool:
        return (
            self._digits_clean
            and len(text) <= SHORT_DIGITS_MAX
            and text.isascii()
            and text.isdigit()
        )

    def _remember(self, cache: dict[str, _V], key: str, value: _V) -> None:
        if len(cache) >= self._cache_entries:
            cache.clear()
        if self._cache_entries:
            cache[key] = value

    def _mask(self, text: str, counts: Counts) -> str:
        # Masking one finding can expose a neighbour that its context hid before
        # ('(200)200-0000(200)200-0000'), so repeat while a pass still finds something.
        for _ in range(self._max_passes):
            before = sum(counts.values())
            text = self._mask_pass(text, counts)
            if sum(counts.values()) == before:
                break
        return text

    def _mask_pass(self, text: str, counts: Counts) -> str:
        lower = text.lower()
        self._counts = counts
        replace = self._replace
        for prefilter, detector in self._plain:
            if prefilter is None or prefilter(text, lower):
                self._current = detector
                text = detector.pattern.sub(replace, text)
        if self._numeric and NUMERIC_RUN.search(text) is not None:
            for prefilter, detector in self._numeric:
                if prefilter is None or prefilter(text, lower):
                    self._current = detector
                    text = detector.pattern.sub(replace, text)
        return text

    def _replace(self, match: re.Match[str]) -> str:
        detector = self._current
        kind = detector.check(match)
        if kind is None:
            return match.group(0)
        self._counts[kind] = self._counts.get(kind, 0) + 1
        replacement = detector.replacement or f"[REDACTED:{kind}]"
        if not detector.masks_group:
            return replacement
        whole, start = match.group(0), match.start()
        secret_start, secret_end = match.span(SECRET_GROUP)
        return whole[: secret_start - start] + replacement + whole[secret_end - start :]

    def _find(self, text: str) -> frozenset[str]:
        lower = text.lower()
        kinds: set[str] = set()
        for prefilter, detector in self._plain:
            if prefilter is None or prefilter(text, lower):
                _find_one(detector, text, kinds)
        if self._numeric and NUMERIC_RUN.search(text) is not None:
            for prefilter, detector in self._numeric:
                if prefilter is None or prefilter(text, lower):
                    _find_one(detector, text, kinds)
        return frozenset(kinds) if kinds else _CLEAN


_CLEAN: frozenset[str] = frozenset()


def _find_one(detector: Detector, text: str, kinds: set[str]) -> None:
    for match in detector.pattern.finditer(text):
        kind = detector.check(match)
        if kind is not None:
            kinds.add(kind)
            return


_NOTHING = Detector("nothing", re.compile(r"(?!)"), lambda match: None)


def place(field: str, key: str) -> str:
    return f"{field}[{key}]" if key else field


def add_counts(event: event_pb2.Event, counts: Counts) -> None:
    """Record per-kind redaction counts in tags (kinds and numbers, never values)."""
    tags = event.tags
    for kind, count in counts.items():
        key = COUNT_TAG_PREFIX + kind
        previous = tags.get(key)
        tags[key] = str(count + int(previous)) if previous and previous.isdigit() else str(count)
