"""Simple JSON paths: ``current.temp_c``, ``list[0].name`` and ``items[].name``.

A path is dot-separated keys, each optionally followed by list indices ``[N]``; at most one
``[]`` marks the list whose items become one event each. Lookups never raise: a missing
key, a wrong type or an index out of range gives ``MISSING``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

ITEMS: Final = "[]"
MISSING: Final = object()
_SEGMENT = re.compile(r"([^.\[\]{}]*)((?:\[\d*\])*)")
_INDEX = re.compile(r"\[(\d*)\]")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")

Step = str | int


class PathError(ValueError):
    """A path or template that cannot be read."""


@dataclass(frozen=True)
class JsonPath:
    text: str
    steps: tuple[Step, ...]
    # Steps up to the list iterated with '[]' (None when the path has no '[]').
    items_prefix: tuple[Step, ...] | None
    # Steps inside each item after the '[]'.
    item_steps: tuple[Step, ...]


def parse_path(text: str) -> JsonPath:
    if not text or len(text) > 512:
        raise PathError(f"path {text!r}: 1..512 characters")
    steps: list[Step] = []
    prefix: tuple[Step, ...] | None = None
    after: list[Step] = []
    for part in text.split("."):
        match = _SEGMENT.fullmatch(part)
        if match is None or (not match.group(1) and not match.group(2)):
            raise PathError(f"path {text!r}: cannot read segment {part!r}")
        target = after if prefix is not None else steps
        if match.group(1):
            target.append(match.group(1))
        for index in _INDEX.findall(match.group(2)):
            if index:
                (after if prefix is not None else steps).append(int(index))
            elif prefix is not None:
                raise PathError(f"path {text!r}: only one '[]' is allowed")
            else:
                prefix = tuple(steps)
    all_steps = tuple(steps) + ((ITEMS,) if prefix is not None else ()) + tuple(after)
    return JsonPath(text, all_steps, prefix, tuple(after))


def template_paths(template: str) -> list[str]:
    """The paths a message template refers to; each is checked."""
    paths = _TEMPLATE_FIELD.findall(template)
    for path in paths:
        parse_path(path)
    return paths


def lookup(value: Any, steps: tuple[Step, ...]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                return MISSING
            value = value[step]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            return MISSING
    return value


def resolve(path: JsonPath, document: Any, item: Any) -> Any:
    """The value at ``path``: inside ``item`` for '[]' paths, from the document otherwise."""
    if path.items_prefix is None:
        return lookup(document, path.steps)
    if item is MISSING:
        return MISSING
    return lookup(item, path.item_steps)


def iterate_items(document: Any, prefix: tuple[Step, ...] | None) -> Iterator[Any]:
    """The items events are made from: the list at ``prefix``, or the document itself once."""
    if prefix is None:
        yield MISSING
        return
    items = lookup(document, prefix)
    if isinstance(items, list):
        yield from items


def as_text(value: Any) -> str | None:
    """A JSON value as attribute text; None for null or a missing value."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render(template: str, document: Any, item: Any) -> str:
    """A template with every {path} replaced by its value ('' when missing)."""

    def value(match: re.Match[str]) -> str:
        text = as_text(resolve(parse_path(match.group(1)), document, item))
        return "" if text is None else text

    return _TEMPLATE_FIELD.sub(value, template)


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counting at most to ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if not isinstance(current, dict | list):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = current.values() if isinstance(current, dict) else current
        stack.extend((child, depth + 1) for child in children)
    return deepest
