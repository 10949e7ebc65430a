"""The one feature extractor of the log-pattern models, shared by training and inference.

Training learns a :class:`Vocabulary` (Drain3 templates of masked messages, frequent words,
components) and stores it in the model's ``metadata.json``; inference rebuilds the same
extractor from that metadata, so a deployed model always sees the features it was trained on.
Most features generalise beyond template ids: keywords such as *error* or *interrupt*, counts
of numbers, hex values and addresses, message length, severity, component, the rarity of the
template, and the presence of frequent words.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from drain3 import TemplateMiner
from drain3.masking import LogMasker, MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

FEATURE_SET_VERSION = 1
WILDCARD = "<*>"
# Order matters: MACs and IPs before plain numbers, block ids before hex.
DEFAULT_MASKING: tuple[tuple[str, str], ...] = (
    ("MAC", r"\b(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}\b"),
    ("IP", r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?![\w.])"),
    ("BLK", r"blk_-?\d+"),
    ("HEX", r"\b0x[0-9A-Fa-f]+\b|\b(?=[0-9A-Fa-f]*\d)(?=[0-9A-Fa-f]*[A-Fa-f])[0-9A-Fa-f]{6,}\b"),
    ("NUM", r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?"),
)
KEYWORDS = (
    "error", "fail", "fatal", "exception", "interrupt", "timeout", "timed out", "panic",
    "critical", "severe", "denied", "refused", "reset", "lost", "corrupt", "unable", "cannot",
    "invalid", "abort", "kill", "terminat", "warn", "parity", "assert", "severed",
    "unreachable", "overflow", "segfault", "mismatch", "not ",
)  # fmt: skip
_WORD = re.compile(r"[A-Za-z][A-Za-z_]{2,}")
_TOKEN_HAS_DIGIT = re.compile(r"\d")
Mode = Literal["line", "session"]


@dataclass(frozen=True)
class LogLine:
    """What the extractor reads of one log line or event."""

    message: str
    component: str = ""
    level: int = 6
    """Syslog level: 0 emergency ... 7 debug."""
    time_ns: int = 0
    session: str = ""


@dataclass
class Vocabulary:
    """What training learned about the data; stored in the model's metadata."""

    mode: Mode
    templates: list[str]
    template_counts: list[int]
    words: list[str]
    components: list[str]
    masking: list[tuple[str, str]] = field(default_factory=lambda: list(DEFAULT_MASKING))
    drain_depth: int = 4
    drain_sim_th: float = 0.5
    session_pattern: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "templates": self.templates,
            "template_counts": self.template_counts,
            "words": self.words,
            "components": self.components,
            "masking": [{"name": name, "pattern": pattern} for name, pattern in self.masking],
            "drain_depth": self.drain_depth,
            "drain_sim_th": self.drain_sim_th,
            "session_pattern": self.session_pattern,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(
            mode=data["mode"],
            templates=list(data["templates"]),
            template_counts=[int(c) for c in data["template_counts"]],
            words=list(data["words"]),
            components=list(data["components"]),
            masking=[(m["name"], m["pattern"]) for m in data["masking"]],
            drain_depth=int(data["drain_depth"]),
            drain_sim_th=float(data["drain_sim_th"]),
            session_pattern=str(data.get("session_pattern", "")),
        )


def make_masker(masking: Sequence[tuple[str, str]]) -> LogMasker:
    return LogMasker([MaskingInstruction(pattern, name) for name, pattern in masking], "<", ">")


def make_miner(
    masking: Sequence[tuple[str, str]], depth: int, sim_th: float, max_clusters: int | None = None
) -> TemplateMiner:
    config = TemplateMinerConfig()
    config.masking_instructions = [MaskingInstruction(p, name) for name, p in masking]
    config.drain_depth = depth
    config.drain_sim_th = sim_th
    config.drain_max_clusters = max_clusters
    config.parametrize_numeric_tokens = True
    return TemplateMiner(config=config)


def fit_vocabulary(
    lines: Iterable[LogLine],
    mode: Mode,
    *,
    max_words: int = 200,
    max_components: int = 20,
    drain_depth: int = 4,
    drain_sim_th: float = 0.5,
    session_pattern: str = "",
    masking: Sequence[tuple[str, str]] = DEFAULT_MASKING,
) -> Vocabulary:
    """Mine templates, frequent words and components from training lines."""
    miner = make_miner(masking, drain_depth, drain_sim_th)
    masker = make_masker(masking)
    words: Counter[str] = Counter()
    components: Counter[str] = Counter()
    for line in lines:
        miner.add_log_message(line.message)
        words.update(set(_words(masker.mask(line.message))))
        components[line.component] += 1
    clusters = sorted(miner.drain.clusters, key=lambda c: c.cluster_id)
    return Vocabulary(
        mode=mode,
        templates=[c.get_template() for c in clusters],
        template_counts=[int(c.size) for c in clusters],
        words=sorted(w for w, _ in words.most_common(max_words)),
        components=sorted(c for c, _ in components.most_common(max_components)),
        masking=list(masking),
        drain_depth=drain_depth,
        drain_sim_th=drain_sim_th,
        session_pattern=session_pattern,
    )


def _words(masked: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(masked)]


class TemplateMatcher:
    """Exact matching of a masked message against known templates (wildcards match a token).

    The same rule as Drain3's ``match``: a template matches when every token that is not a
    wildcard is equal; among matches the one with the fewest wildcards wins.
    """

    def __init__(self, templates: Sequence[str]) -> None:
        self._by_length: dict[int, list[tuple[int, tuple[str, ...], int]]] = {}
        for index, template in enumerate(templates):
            tokens = tuple(template.split())
            wildcards = sum(1 for t in tokens if t == WILDCARD)
            self._by_length.setdefault(len(tokens), []).append((index, tokens, wildcards))
        for candidates in self._by_length.values():
            candidates.sort(key=lambda c: c[2])

    def match(self, masked: str) -> int:
        tokens = masked.split()
        for index, template, _ in self._by_length.get(len(tokens), ()):
            if all(t in (WILDCARD, m) for t, m in zip(template, tokens, strict=True)):
                return index
        return -1


class FeatureExtractor:
    """Numeric features for lines (``mode: line``) or sessions of lines (``mode: session``)."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.masker = make_masker(vocabulary.masking)
        self.matcher = TemplateMatcher(vocabulary.templates)
        self._word_index = {w: i for i, w in enumerate(vocabulary.words)}
        self._component_index = {c: i for i, c in enumerate(vocabulary.components)}
        total = max(1, max(vocabulary.template_counts, default=1))
        self._template_freq = [
            math.log1p(c) / math.log1p(total) for c in vocabulary.template_counts
        ]
        self._session = (
            re.compile(vocabulary.session_pattern) if vocabulary.session_pattern else None
        )

    # Names -----------------------------------------------------------------------------
    def _generic_names(self) -> list[str]:
        return [
            "len_chars", "n_tokens", "n_num", "n_hex", "n_ip", "n_mac", "n_path",
            "digit_ratio", "upper_ratio", "level", "template_known", "template_freq",
            "template_wildcard_ratio",
            *(f"kw_{k.strip().replace(' ', '_')}" for k in KEYWORDS),
        ]  # fmt: skip

    def feature_names(self) -> list[str]:
        generic = self._generic_names()
        # LightGBM refuses JSON punctuation in names: components and templates go by index.
        components = [f"component_{i}" for i in range(len(self.vocabulary.components))]
        components.append("component_other")
        if self.vocabulary.mode == "line":
            return generic + components + [f"word_{w}" for w in self.vocabulary.words]
        templates = [f"template_count_{i}" for i in range(len(self.vocabulary.templates))]
        session = ["n_lines", "n_distinct_templates", "n_unseen_templates", "duration_s"]
        return (
            session
            + templates
            + [f"sum_{n}" for n in generic]
            + [f"max_{n}" for n in generic]
            + components
        )

    # Lines -----------------------------------------------------------------------------
    def template_of(self, line: LogLine) -> tuple[int, str]:
        """Index of the line's known template (-1 when unseen) and its masked text."""
        masked = self.masker.mask(line.message)
        return self.matcher.match(masked), masked

    def _line_parts(self, line: LogLine) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        template, masked = self.template_of(line)
        message = line.message
        lower = message.lower()
        tokens = masked.split()
        generic = [
            float(len(message)),
            float(len(tokens)),
            float(masked.count("<NUM>") + sum(1 for t in tokens if _TOKEN_HAS_DIGIT.search(t))),
            float(masked.count("<HEX>")),
            float(masked.count("<IP>")),
            float(masked.count("<MAC>")),
            float(sum(1 for t in tokens if "/" in t)),
            sum(ch.isdigit() for ch in message) / max(1, len(message)),
            sum(ch.isupper() for ch in message) / max(1, len(message)),
            float(line.level),
            1.0 if template >= 0 else 0.0,
            self._template_freq[template] if template >= 0 else 0.0,
            _wildcard_ratio(self.vocabulary.templates[template]) if template >= 0 else 1.0,
            *(1.0 if k in lower else 0.0 for k in KEYWORDS),
        ]
        components = np.zeros(len(self.vocabulary.components) + 1)
        components[self._component_index.get(line.component, len(self.vocabulary.components))] = 1
        words = np.zeros(len(self.vocabulary.words))
        for word in _words(masked):
            index = self._word_index.get(word)
            if index is not None:
                words[index] = 1.0
        return np.array(generic), components, words, template

    def line_matrix(self, lines: Sequence[LogLine]) -> np.ndarray:
        rows = []
        for line in lines:
            generic, components, words, _ = self._line_parts(line)
            rows.append(np.concatenate([generic, components, words]))
        return _stack(rows, len(self.feature_names()))

    # Sessions --------------------------------------------------------------------------
    def session_of(self, line: LogLine) -> str:
        if line.session:
            return line.session
        if self._session is None:
            return ""
        match = self._session.search(line.message)
        return match.group(0) if match else ""

    def session_row(self, lines: Sequence[LogLine]) -> np.ndarray:
        n_templates = len(self.vocabulary.templates)
        counts = np.zeros(n_templates)
        generic_rows = []
        component_sum = np.zeros(len(self.vocabulary.components) + 1)
        unseen: set[str] = set()
        for line in lines:
            generic, components, _, template = self._line_parts(line)
            generic_rows.append(generic)
            component_sum += components
            if template >= 0:
                counts[template] += 1
            else:
                unseen.add(self.masker.mask(line.message))
        width = len(self._generic_names())
        generic_matrix = np.array(generic_rows) if generic_rows else np.zeros((1, width))
        times = [line.time_ns for line in lines if line.time_ns]
        session = [
            float(len(lines)),
            float(np.count_nonzero(counts)),
            float(len(unseen)),
            (max(times) - min(times)) / 1e9 if times else 0.0,
        ]
        return np.concatenate(
            [session, counts, generic_matrix.sum(axis=0), generic_matrix.max(axis=0), component_sum]
        )

    def session_matrix(self, sessions: Sequence[Sequence[LogLine]]) -> np.ndarray:
        return _stack([self.session_row(s) for s in sessions], len(self.feature_names()))

    def matrix(self, groups: Sequence[Sequence[LogLine]]) -> np.ndarray:
        """Rows for lines (each group one line) or sessions, following the vocabulary's mode."""
        if self.vocabulary.mode == "line":
            return self.line_matrix([group[0] for group in groups])
        return self.session_matrix(groups)


def _wildcard_ratio(template: str) -> float:
    tokens = template.split()
    return sum(1 for t in tokens if t.startswith("<") and t.endswith(">")) / max(1, len(tokens))


def _stack(rows: list[np.ndarray], width: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, width))
    return np.vstack(rows)
