"""Event and batch ids: UUIDv7 that sort in creation order and never repeat, even across a
fork or a burst of more ids in one millisecond than the counter holds."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from mesh import ids
from mesh.ids import uuid7


def test_an_id_is_a_version_7_uuid_carrying_the_current_millisecond() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after_ms = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before_ms <= value.int >> 80 <= after_ms + 1


def test_ids_are_unique_and_sort_in_the_order_they_were_made() -> None:
    made = [uuid7() for _ in range(50_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)


def test_a_burst_beyond_the_counter_moves_the_clock_ahead_instead_of_repeating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pin the clock: every id falls in the same millisecond, so the 12-bit counter
    # must run out and spill into the next millisecond.
    frozen_ns = time.time_ns() + 10 * 60 * 1_000_000_000
    monkeypatch.setattr(ids.time, "time_ns", lambda: frozen_ns)
    # Restored afterwards, so later ids do not carry the pinned time.
    monkeypatch.setattr(ids, "_last_ms", 0)
    monkeypatch.setattr(ids, "_counter", 0)
    made = [uuid7() for _ in range(3 * 4096)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    milliseconds = {uuid.UUID(value).int >> 80 for value in made}
    assert min(milliseconds) == frozen_ns // 1_000_000
    assert len(milliseconds) >= 3


def test_a_forked_child_does_not_reuse_the_parents_random_bits() -> None:
    uuid7()  # the parent now holds a block of unread random bytes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, "\n".join(uuid7() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    parent = [uuid7() for _ in range(100)]
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    random_part = {value[-17:] for value in parent}  # variant nibble + 60 random bits
    assert not random_part & {value[-17:] for value in child}
