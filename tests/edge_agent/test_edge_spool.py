"""The SQLite spool: durability, quota, corruption handling, stable batch identity."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from edge_helpers import make_event
from prometheus_client import REGISTRY

from edge_agent.inputs.base import hand_to_spool
from edge_agent.spool import Spool, SpooledBatch
from gen.edgebot.v1 import encoded_pb2, event_pb2


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value("edgebot_spool_dropped_total", {"reason": reason})
    return value or 0.0


async def opened(path: Path, max_bytes: int = 1 << 30) -> Spool:
    spool = Spool(path, max_bytes)
    await spool.open()
    return spool


async def test_committed_events_survive_reopen(tmp_path: Path) -> None:
    events = [make_event(f"m{i}") for i in range(3)]
    spool = await opened(tmp_path / "s.db")
    result = await spool.append(events)
    assert (result.accepted, result.refused) == (3, 0)
    await spool.close()

    reopened = await opened(tmp_path / "s.db")
    assert (reopened.events, reopened.bytes) == (3, sum(e.ByteSize() for e in events))
    batch = await reopened.form_batch(10, 1 << 20)
    assert batch is not None
    assert [event_pb2.Event.FromString(d) for d in batch.events] == events
    await reopened.close()


async def test_journal_is_wal_with_full_sync(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db")
    modes = await spool._run(
        lambda: (
            spool._conn.execute("PRAGMA journal_mode").fetchone()[0],
            spool._conn.execute("PRAGMA synchronous").fetchone()[0],
        )
    )
    assert modes == ("wal", 2)
    await spool.close()


async def test_accepting_commits_stay_fsynced_after_batches_are_formed_and_acked(
    tmp_path: Path,
) -> None:
    spool = await opened(tmp_path / "s.db")
    await spool.append([make_event(f"m{i}") for i in range(3)])
    batch = await spool.form_batch(2, 1 << 20)
    assert batch is not None
    await spool.ack(batch.batch_id)
    synchronous = await spool._run(lambda: spool._conn.execute("PRAGMA synchronous").fetchone()[0])
    assert synchronous == 2  # FULL: the next append is durable on its own
    await spool.close()


async def test_a_formed_batch_lost_to_a_power_cut_is_formed_again_from_its_events(
    tmp_path: Path,
) -> None:
    """What a power loss can undo (forming is not fsynced): the events come back unbatched
    and go out in a new batch, whose ids storage then counts as duplicates."""
    events = [make_event(f"m{i}") for i in range(3)]
    spool = await opened(tmp_path / "s.db")
    await spool.append(events)
    lost = await spool.form_batch(10, 1 << 20)
    assert lost is not None
    await spool.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("DELETE FROM batches WHERE batch_id = ?", (lost.batch_id,))

    reopened = await opened(tmp_path / "s.db")
    assert await reopened.pending_batches() == []
    again = await reopened.form_batch(10, 1 << 20)
    assert again is not None
    assert again.batch_id != lost.batch_id
    assert [event_pb2.Event.FromString(d) for d in again.events] == events
    await reopened.close()


async def test_quota_refuses_and_counts_drops(tmp_path: Path) -> None:
    events = [make_event("x" * 100) for _ in range(5)]
    size = events[0].ByteSize()
    spool = await opened(tmp_path / "s.db", max_bytes=2 * size + size // 2)
    before = dropped("spool_full")

    result = await hand_to_spool(spool, events)

    assert (result.accepted, result.refused, result.spool_full) == (2, 3, True)
    assert dropped("spool_full") - before == 3
    assert REGISTRY.get_sample_value("edgebot_spool_events") == 2
    assert REGISTRY.get_sample_value("edgebot_spool_bytes") == 2 * size
    batch = await spool.form_batch(10, 1 << 20)
    assert batch is not None
    await spool.ack(batch.batch_id)
    assert (await spool.append(events[2:3])).accepted == 1
    await spool.close()


def corrupt_copies(directory: Path) -> list[Path]:
    return list(directory.glob("s.db.corrupt-*"))


async def test_corrupt_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    garbage = b"this is not a sqlite database" * 200
    path.write_bytes(garbage)

    spool = await opened(path)

    moved = corrupt_copies(tmp_path)
    assert len(moved) == 1
    assert moved[0].read_bytes() == garbage
    assert f"moved it aside to {moved[0]}" in caplog.text
    assert (await spool.append([make_event("fresh")])).accepted == 1
    await spool.close()


async def test_batches_keep_id_and_seq_across_reopen(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db")
    events = [make_event(f"m{i}") for i in range(5)]
    await spool.append(events)
    first = await spool.form_batch(3, 1 << 20)
    second = await spool.form_batch(3, 1 << 20)
    assert first is not None
    assert second is not None
    assert (len(first.events), len(second.events)) == (3, 2)
    assert second.seq == first.seq + 1
    assert await spool.form_batch(3, 1 << 20) is None
    await spool.close()

    reopened = await opened(tmp_path / "s.db")
    assert await reopened.pending_batches() == [first, second]
    await reopened.ack(first.batch_id)
    assert await reopened.pending_batches() == [second]
    assert reopened.events == 2
    await reopened.append([make_event("later")])
    third = await reopened.form_batch(3, 1 << 20)
    assert third is not None
    assert third.seq == second.seq + 1
    proto = as_sent(second, is_retry=True)
    assert (proto.batch_id, proto.agent_id, proto.seq, proto.is_retry, len(proto.events)) == (
        second.batch_id,
        "site-a",
        second.seq,
        True,
        2,
    )
    assert [e.message for e in proto.events] == [e.message for e in events[3:5]]
    await reopened.close()


def as_sent(batch: SpooledBatch, is_retry: bool) -> event_pb2.EventBatch:
    """The batch as ingest reads what the shipper writes."""
    encoded = encoded_pb2.EncodedEventBatch()
    batch.fill(encoded, "site-a", is_retry)
    return event_pb2.EventBatch.FromString(encoded.SerializeToString())


async def test_batch_respects_byte_limit(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db")
    events = [make_event("y" * 1000) for _ in range(10)]
    await spool.append(events)
    batch = await spool.form_batch(10, 3500)
    assert batch is not None
    assert as_sent(batch, is_retry=False).ByteSize() <= 3500
    assert len(batch.events) == 3
    await spool.close()


async def test_partial_and_rejected_acks_fill_dead_letters(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db")
    events = [make_event(f"m{i}") for i in range(4)]
    await spool.append(events)
    partial = await spool.form_batch(3, 1 << 20)
    rejected = await spool.form_batch(3, 1 << 20)
    assert partial is not None
    assert rejected is not None

    errors = [event_pb2.EventError(index=1, event_id=events[1].id, field="time", reason="bad")]
    assert await spool.ack_partial(partial.batch_id, errors) == 3
    assert await spool.reject(rejected.batch_id, "batch too large") == 1

    letters = await spool.dead_letters()
    assert [(d.event.id, d.status, d.field, d.reason) for d in letters] == [
        (events[1].id, "partial", "time", "bad"),
        (events[3].id, "rejected", "batch", "batch too large"),
    ]
    assert (spool.events, spool.bytes) == (0, 0)
    assert await spool.pending_batches() == []
    await spool.close()


def unbatched_in_file(path: Path) -> tuple[int, int | None]:
    """What the spool file itself says is waiting: a reader of its own (WAL allows it)."""
    with sqlite3.connect(path) as reader:
        (upto,) = reader.execute("SELECT COALESCE(MAX(last_rowid), 0) FROM batches").fetchone()
        (count,) = reader.execute("SELECT COUNT(*) FROM events WHERE rowid > ?", (upto,)).fetchone()
        oldest = reader.execute(
            "SELECT appended_ns FROM events WHERE rowid > ? ORDER BY rowid LIMIT 1", (upto,)
        ).fetchone()
    return count, None if oldest is None else oldest[0]


async def test_what_waits_for_a_batch_matches_the_file_through_every_kind_of_change(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, 5_000, overflow_policy="drop_lowest_severity")  # about 30 events
    await spool.open()

    async def agrees(step: str) -> None:
        waiting = await spool.waiting(1 << 30)
        assert (waiting.count, waiting.oldest_appended_ns) == unbatched_in_file(path), step

    def events(n: int, severity: int, tag: str) -> list[event_pb2.Event]:
        return [
            event_pb2.Event(id=f"{tag}-{i}", message="x" * 150, severity=severity)  # type: ignore[arg-type]
            for i in range(n)
        ]

    await agrees("empty")
    await spool.append(events(10, 7, "debug"))
    await agrees("appended")
    first = await spool.form_batch(4, 1 << 24)
    assert first is not None
    await agrees("formed a batch of the oldest four")
    await spool.append(events(20, 7, "debug-2"))
    await agrees("appended more")
    result = await spool.offer(events(15, 3, "err"))  # full: evicts waiting debug events
    assert result.evicted > 0
    await agrees("severe events evicted waiting ones")
    while await spool.form_batch(7, 1 << 24) is not None:
        await agrees("formed another batch")
    await spool.ack(first.batch_id)
    await agrees("acked the first batch")
    await spool.append(events(3, 7, "late"))
    await spool.close()
    spool = Spool(path, 5_000)
    await spool.open()
    await agrees("reopened")
    await spool.close()
