"""A circuit breaker: after N consecutive failures stop calling for a while, then probe."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures; open for ``open_s``;
    then half-open, letting ``half_open_calls`` probes through: a success closes it, a
    failure opens it again."""

    def __init__(
        self,
        failure_threshold: int = 5,
        open_s: float = 60.0,
        half_open_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or open_s <= 0 or half_open_calls < 1:
            raise ValueError("failure_threshold and half_open_calls >= 1, open_s > 0")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.half_open_calls = half_open_calls
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.open_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def seconds_until_probe(self) -> float:
        """0 while calls may go ahead; while open, the time left until the next probe."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.open_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether a call may go ahead now (counts a half-open probe)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._probes < self.half_open_calls:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probes = 0

    def record_failure(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._trip()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._trip()

    def _trip(self) -> None:
        self._opened_at = self._clock()
        self._probes = 0
        self._failures = 0
