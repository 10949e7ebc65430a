"""A full spool under the drop_lowest_severity policy: what goes, what stays, what is counted."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from edge_helpers import eventually, make_event
from prometheus_client import REGISTRY

from edge_agent.config import SyslogUdpConfig
from edge_agent.inputs.base import hand_to_spool
from edge_agent.inputs.syslog_udp import SyslogUdpInput
from edge_agent.spool import OverflowPolicy, Spool
from gen.edgebot.v1 import event_pb2

SEV = event_pb2.Severity


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("edgebot_spool_dropped_total", {"reason": reason}) or 0.0


def dropped_severity(name: str) -> float:
    sample = REGISTRY.get_sample_value(
        "edgebot_spool_dropped_by_severity_total", {"severity": name}
    )
    return sample or 0.0


def event(message: str, severity: int) -> event_pb2.Event:
    made = make_event(message)
    made.severity = severity  # type: ignore[assignment]
    return made


def sized(severity: int, count: int, tag: str) -> list[event_pb2.Event]:
    """Events of one size (the message pads every id to the same length)."""
    return [event(f"{tag}-{i:04d}-" + "x" * 80, severity) for i in range(count)]


async def opened(path: Path, room_for: int, policy: OverflowPolicy) -> Spool:
    size = sized(SEV.SEVERITY_INFORMATIONAL, 1, "probe")[0].ByteSize()
    spool = Spool(path, room_for * size + size // 2, policy)
    await spool.open()
    return spool


async def messages(spool: Spool) -> list[str]:
    batch = await spool.form_batch(10_000, 1 << 24)
    assert batch is not None
    return [event_pb2.Event.FromString(data).message.split("-x")[0] for data in batch.events]


def tags(events: Iterable[event_pb2.Event]) -> list[str]:
    return [e.message.split("-x")[0] for e in events]


async def test_errors_evict_debug_first_then_info_oldest_first(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db", 6, "drop_lowest_severity")
    info = sized(SEV.SEVERITY_INFORMATIONAL, 3, "info")
    debug = sized(SEV.SEVERITY_DEBUG, 3, "debug")
    assert (
        await hand_to_spool(spool, [info[0], debug[0], info[1], debug[1], info[2], debug[2]])
    ).accepted == 6
    before = {r: dropped(r) for r in ("spool_full", "evicted")}
    by_level = {n: dropped_severity(n) for n in ("debug", "info", "error")}

    errors = sized(SEV.SEVERITY_ERROR, 4, "error")
    result = await hand_to_spool(spool, errors)

    assert (result.accepted, result.refused, result.evicted) == (4, 0, 4)
    assert await messages(spool) == ["info-0001", "info-0002", *tags(errors)]
    assert dropped("evicted") - before["evicted"] == 4
    assert dropped("spool_full") == before["spool_full"]
    assert dropped_severity("debug") - by_level["debug"] == 3
    assert dropped_severity("info") - by_level["info"] == 1
    assert dropped_severity("error") == by_level["error"]
    assert spool.events == 6
    await spool.close()


async def test_a_newcomer_no_more_severe_than_what_waits_is_refused(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db", 3, "drop_lowest_severity")
    warnings = sized(SEV.SEVERITY_WARNING, 3, "warn")
    await hand_to_spool(spool, warnings)

    result = await hand_to_spool(
        spool, [*sized(SEV.SEVERITY_WARNING, 1, "late"), *sized(SEV.SEVERITY_DEBUG, 1, "dbg")]
    )

    assert (result.accepted, result.refused, result.evicted) == (0, 2, 0)
    assert result.dropped_levels == {4: 1, 7: 1}
    assert await messages(spool) == tags(warnings)
    await spool.close()


async def test_one_offer_keeps_its_most_severe_events(tmp_path: Path) -> None:
    """Within one offer a later error pushes out an earlier debug line of the same offer."""
    spool = await opened(tmp_path / "s.db", 2, "drop_lowest_severity")
    offered = [
        *sized(SEV.SEVERITY_DEBUG, 2, "dbg"),
        *sized(SEV.SEVERITY_ERROR, 1, "err"),
        *sized(SEV.SEVERITY_CRITICAL, 1, "crit"),
    ]

    result = await hand_to_spool(spool, offered)

    # Two debug lines were inserted then pushed out within the same transaction: refused,
    # not evicted, since they never counted as received.
    assert (result.accepted, result.refused, result.evicted) == (2, 2, 0)
    assert await messages(spool) == ["err-0000", "crit-0000"]
    assert spool.events == 2
    await spool.close()


async def test_events_in_a_batch_are_never_evicted(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db", 2, "drop_lowest_severity")
    await hand_to_spool(spool, sized(SEV.SEVERITY_DEBUG, 2, "dbg"))
    in_flight = await spool.form_batch(10, 1 << 20)
    assert in_flight is not None

    result = await hand_to_spool(spool, sized(SEV.SEVERITY_EMERGENCY, 1, "emerg"))

    assert (result.accepted, result.refused, result.evicted) == (0, 1, 0)
    assert len((await spool.pending_batches())[0].events) == 2
    await spool.close()


async def test_nothing_is_evicted_in_vain(tmp_path: Path) -> None:
    """An event too large for all evictable room together evicts nothing."""
    spool = await opened(tmp_path / "s.db", 3, "drop_lowest_severity")
    waiting = sized(SEV.SEVERITY_DEBUG, 3, "dbg")
    await hand_to_spool(spool, waiting)

    huge = event("huge-" + "y" * 2000, SEV.SEVERITY_ALERT)
    result = await hand_to_spool(spool, [huge])

    assert (result.accepted, result.refused, result.evicted) == (0, 1, 0)
    assert await messages(spool) == tags(waiting)
    await spool.close()


async def test_drop_newest_refuses_without_evicting(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db", 2, "drop_newest")
    await hand_to_spool(spool, sized(SEV.SEVERITY_DEBUG, 2, "dbg"))

    result = await hand_to_spool(spool, sized(SEV.SEVERITY_EMERGENCY, 1, "emerg"))

    assert (result.accepted, result.refused, result.evicted) == (0, 1, 0)
    assert await messages(spool) == ["dbg-0000", "dbg-0001"]
    await spool.close()


async def test_counts_survive_reopen_after_evictions(tmp_path: Path) -> None:
    spool = await opened(tmp_path / "s.db", 4, "drop_lowest_severity")
    await hand_to_spool(spool, sized(SEV.SEVERITY_DEBUG, 4, "dbg"))
    await hand_to_spool(spool, sized(SEV.SEVERITY_ERROR, 3, "err"))
    counted = (spool.events, spool.bytes)
    await spool.close()

    again = await opened(tmp_path / "s.db", 4, "drop_lowest_severity")
    assert (again.events, again.bytes) == counted
    assert await messages(again) == ["dbg-0003", "err-0000", "err-0001", "err-0002"]
    await again.close()


FIRST_RELEASE_SCHEMA = """
CREATE TABLE events (rowid INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
    appended_ns INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL, batch_id TEXT);
CREATE INDEX events_by_batch ON events (batch_id, rowid);
CREATE TABLE batches (batch_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE,
    formed_ns INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('next_seq', 2);
INSERT INTO batches VALUES ('old-batch', 1, 1);
"""


async def test_a_spool_file_of_the_first_release_is_migrated(tmp_path: Path) -> None:
    """Its batch keeps its id, seq and events; its unbatched event is batched next."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(FIRST_RELEASE_SCHEMA)
    kept = [make_event(f"from the old release {i}") for i in range(3)]
    for event, batch_id in zip(kept, ["old-batch", "old-batch", None], strict=True):
        old.execute(
            "INSERT INTO events (event_id, appended_ns, size, data, batch_id) "
            "VALUES (?, 1, ?, ?, ?)",
            (event.id, event.ByteSize(), event.SerializeToString(), batch_id),
        )
    old.commit()
    old.close()

    spool = Spool(path, 1 << 20, "drop_lowest_severity")
    await spool.open()
    assert spool.events == 3
    (pending,) = await spool.pending_batches()
    assert (pending.batch_id, pending.seq) == ("old-batch", 1)
    assert [event_pb2.Event.FromString(d) for d in pending.events] == kept[:2]
    fresh = await spool.form_batch(10, 1 << 20)
    assert fresh is not None
    assert fresh.seq == 2
    assert [event_pb2.Event.FromString(d) for d in fresh.events] == kept[2:]
    assert await spool.ack("old-batch") == 2
    assert await spool.ack(fresh.batch_id) == 1
    assert spool.events == 0
    await spool.close()


async def logger(port: int, priority: str, message: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *("logger", "-n", "127.0.0.1", "-P", str(port), "-d", "--rfc3164"),
        *("-p", priority, "-t", "app", message),
        env={**os.environ, "TZ": "UTC"},
    )
    assert await process.wait() == 0


async def test_udp_input_on_a_full_spool_keeps_errors_and_counts_exactly(tmp_path: Path) -> None:
    """Real datagrams from logger: notices fill the spool, then errors push notices out."""
    spool = Spool(tmp_path / "spool.db", 8000, "drop_lowest_severity")
    await spool.open()
    udp = SyslogUdpInput(
        SyslogUdpConfig(host="127.0.0.1", port=0, flush_interval_s=0.01), spool, "site-a"
    )
    await udp.start()
    assert udp.port is not None
    before = {r: dropped(r) for r in ("spool_full", "evicted")}

    sent_notices = 0
    while dropped("spool_full") == before["spool_full"]:
        assert sent_notices < 500, "the spool never filled"
        await logger(udp.port, "user.notice", f"notice {sent_notices:03d} " + "z" * 60)
        sent_notices += 1
        await eventually(
            lambda sent=sent_notices: (
                spool.events + dropped("spool_full") - before["spool_full"] == sent
            ),
            5,
            "the notice spooled or refused",
        )
    kept_notices = spool.events
    assert kept_notices >= 10

    for i in range(10):
        await logger(udp.port, "user.err", f"error {i:03d} " + "z" * 60)

    def evicted() -> int:
        return int(dropped("evicted") - before["evicted"])

    await eventually(
        lambda: spool.events == kept_notices - evicted() + 10, 5, "all ten errors spooled"
    )
    await udp.stop()

    batch = await spool.form_batch(1000, 1 << 24)
    assert batch is not None
    stored = [event_pb2.Event.FromString(d) for d in batch.events]
    assert sum(e.severity == SEV.SEVERITY_ERROR for e in stored) == 10
    assert sum(e.severity == SEV.SEVERITY_NOTICE for e in stored) == kept_notices - evicted()
    assert evicted() >= 9, "the spool was full: (nearly) every error needed room"
    assert dropped("spool_full") - before["spool_full"] == sent_notices - kept_notices
    await spool.close()
