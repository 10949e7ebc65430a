"""Time-ordered unique identifiers (UUIDv7, RFC 9562)."""

from __future__ import annotations

import os
import threading
import time

# Random bits come from the OS's CSPRNG in blocks: one getrandom() call per 512 ids instead
# of two per id (the agent makes an id per received line).
RANDOM_BLOCK_BYTES = 4096
_RANDOM_BYTES_PER_ID = 8
_MAX_COUNTER = 0xFFF

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_random = b""
_random_at = 0


def _random_u64() -> int:
    global _random, _random_at
    if _random_at >= len(_random):
        _random, _random_at = os.urandom(RANDOM_BLOCK_BYTES), 0
    start = _random_at
    _random_at += _RANDOM_BYTES_PER_ID
    return int.from_bytes(_random[start : start + _RANDOM_BYTES_PER_ID], "big")


def _forget_random() -> None:
    """A forked child must not reuse the parent's unread random bytes: same ids."""
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def uuid7() -> str:
    """A UUIDv7 string; ids made in one process sort in creation order.

    Within a millisecond a 12-bit counter (started at a random value below 1024) orders
    the ids; when it runs out the timestamp moves one millisecond ahead (RFC 9562 §6.2,
    method 1 with a random seed).
    """
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        bits = _random_u64()
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = bits >> 54  # a random start below 1024, from the same draw
        else:
            _counter += 1
            if _counter > _MAX_COUNTER:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    value = (
        (ms & 0xFFFFFFFFFFFF) << 80
        | 0x7 << 76
        | counter << 64
        | 0b10 << 62
        | bits & 0x3FFFFFFFFFFFFFFF
    )
    hex_digits = f"{value:032x}"
    return (
        f"{hex_digits[:8]}-{hex_digits[8:12]}-{hex_digits[12:16]}-"
        f"{hex_digits[16:20]}-{hex_digits[20:]}"
    )
