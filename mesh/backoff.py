"""Exponential backoff with jitter, for every reconnect and retry loop of the services."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Between half and all of min(max, initial * 2^attempt): spread, never synchronised."""
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, 32))
    return ceiling / 2 + rand() * ceiling / 2
