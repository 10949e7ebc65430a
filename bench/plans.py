"""The ``events`` table filled for reading query plans, the reads whose plans matter, EXPLAIN.

The rows are the benchmark's realistic syslog (``bench.limit.stored_events``: the real
samples in shared/data, the edge parser, the default pipeline), spread evenly over the
SPAN_NS before a UTC midnight, so each day partition holds a whole day and the same rows
from one run to the next, and written through ``PostgresSink.write``, the storage
service's own path (ledger, event ids, day partitions, binary COPY). A few carry rare
values, what the selections look for: RARE_ATTRIBUTES on one event in ATTRIBUTE_EVERY,
RARE_TAGS on one in TAG_EVERY, NEEDLE_ATTRIBUTES on NEEDLE_EVENTS events in all.

The SQL explained is what the sink runs (``postgres_rows.page_statement`` and friends),
with the same parameters, so a plan shown here is the plan of a real ``QueryEvents``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.limit import stored_events
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import NS_PER_S, ns_to_ts, ts_to_ns
from storage_svc.config import PostgresSection
from storage_svc.query import EventFilter, GroupBy, PageRequest, SortOrder
from storage_svc.sinks.base import BatchWrite
from storage_svc.sinks.postgres import PostgresSink, session_options
from storage_svc.sinks.postgres_rows import (
    Statement,
    aggregate_statement,
    events_after_statement,
    page_statement,
)

HOUR_NS = 3600 * NS_PER_S
SPAN_NS = 48 * HOUR_NS
"""How long a time the rows cover by default: two whole day partitions."""
WINDOW_NS = 6 * HOUR_NS
"""The time window of the attribute + time selection: the last hours of the span."""
RARE_ATTRIBUTES = {"net.src_ip": "198.51.100.23"}
"""A sender seen in few events: a rare value of an attribute every event has."""
RARE_TAGS = {"incident": "INC-4711"}
"""A tag few events carry (as an add_tags rule would put on them)."""
NEEDLE_ATTRIBUTES = {"syslog.pid": "99999"}
"""A process id no generated line has (theirs are below 32768), put on NEEDLE_EVENTS."""
ATTRIBUTE_EVERY = 500
TAG_EVERY = 1000
NEEDLE_EVENTS = 3
BATCH_EVENTS = 1000
PAGE = PageRequest(SortOrder.NEWEST_FIRST, 100)
"""QueryEvents' default page: newest first, query.default_page_size events."""
ATTRIBUTES_INDEX = "events_attributes"
TAGS_INDEX = "events_tags"
CUSTOM_PLANS = 5
"""Executions of a prepared statement that PostgreSQL always plans for their parameters;
from the next one on it may keep a generic plan instead (plan_cache_mode = auto)."""
AUTO_EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_level = notice",
)


@dataclass(frozen=True)
class Loaded:
    """What was written: each event's time by id, and the ids carrying each rare value."""

    times: Mapping[str, int]
    rare_attribute_ids: frozenset[str]
    rare_tag_ids: frozenset[str]
    needle_ids: frozenset[str]
    end_ns: int

    @property
    def rows(self) -> int:
        return len(self.times)

    def newest_first(self, ids: frozenset[str]) -> list[str]:
        """``ids`` in QueryEvents' newest-first (time, id) order."""
        return sorted(ids, key=lambda event_id: (self.times[event_id], event_id), reverse=True)


@dataclass(frozen=True)
class Case:
    """One selection whose page query should be answered from ``index``: the events it
    selects, and the ids of its first page (newest first)."""

    name: str
    selection: EventFilter
    index: str
    expected_ids: frozenset[str]
    first_page: tuple[str, ...]

    def statement(self) -> Statement:
        return page_statement(self.selection, PAGE)


def cases(loaded: Loaded) -> dict[str, Case]:
    """By attribute (a rare value, then a needle), by tag, and by attribute within the
    last WINDOW_NS of the span."""
    start = loaded.end_ns - WINDOW_NS
    recent = frozenset(i for i in loaded.rare_attribute_ids if loaded.times[i] >= start)
    window = EventFilter(start_ns=start, end_ns=loaded.end_ns, attributes=RARE_ATTRIBUTES)
    attribute = EventFilter(attributes=RARE_ATTRIBUTES)
    needle = EventFilter(attributes=NEEDLE_ATTRIBUTES)
    found = (
        ("attribute", attribute, ATTRIBUTES_INDEX, loaded.rare_attribute_ids),
        ("attribute, a needle", needle, ATTRIBUTES_INDEX, loaded.needle_ids),
        ("tag", EventFilter(tags=RARE_TAGS), TAGS_INDEX, loaded.rare_tag_ids),
        ("attribute + time window", window, ATTRIBUTES_INDEX, recent),
    )
    return {
        name: Case(name, selection, index, ids, tuple(loaded.newest_first(ids)[: PAGE.size]))
        for name, selection, index, ids in found
    }


def other_reads(loaded: Loaded) -> dict[str, Statement]:
    """The sink's other selected reads: per-hour counts (AggregateEvents) and a tail's replay
    (TailEvents from the start, and from a recent cursor)."""
    by_tag = EventFilter(tags=RARE_TAGS)
    return {
        "aggregate: attribute, per hour and service": aggregate_statement(
            EventFilter(attributes=RARE_ATTRIBUTES), HOUR_NS, GroupBy.SERVICE
        ),
        "events_after: tag, from seq 0": events_after_statement(0, by_tag, 1000),
        "events_after: tag, the last 1,000 seqs": events_after_statement(
            max(loaded.rows - 1000, 0), by_tag, 1000
        ),
    }


def midnight_utc(ns: int) -> int:
    """The UTC midnight at or before ``ns``."""
    day = dt.datetime.fromtimestamp(ns / NS_PER_S, dt.UTC).date()
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()) * NS_PER_S


async def marked_events(count: int, end_ns: int, span_ns: int) -> list[event_pb2.Event]:
    """``count`` stored events spread over the ``span_ns`` before ``end_ns``, oldest first,
    a few with the rare attribute or tag."""
    events = await stored_events(count)
    step = span_ns // count
    needles = {count * (n + 1) // (NEEDLE_EVENTS + 1) for n in range(NEEDLE_EVENTS)}
    for number, event in enumerate(events):
        ns_to_ts(end_ns - span_ns + number * step, event.time)
        event.observed_time.CopyFrom(event.time)
        if number % ATTRIBUTE_EVERY == ATTRIBUTE_EVERY // 2:
            event.attributes.update(RARE_ATTRIBUTES)
        if number % TAG_EVERY == TAG_EVERY // 3:
            event.tags.update(RARE_TAGS)
        if number in needles:
            event.attributes.update(NEEDLE_ATTRIBUTES)
    return events


def _carrying(
    events: Sequence[event_pb2.Event], field: str, wanted: Mapping[str, str]
) -> frozenset[str]:
    return frozenset(e.id for e in events if wanted.items() <= dict(getattr(e, field)).items())


def loaded_from(events: Sequence[event_pb2.Event], end_ns: int) -> Loaded:
    return Loaded(
        {event.id: ts_to_ns(event.time) for event in events},
        _carrying(events, "attributes", RARE_ATTRIBUTES),
        _carrying(events, "tags", RARE_TAGS),
        _carrying(events, "attributes", NEEDLE_ATTRIBUTES),
        end_ns,
    )


def sink(config: PostgresSection) -> PostgresSink:
    return PostgresSink(config, on_commit=lambda _: None)


async def write_all(config: PostgresSection, events: Sequence[event_pb2.Event]) -> None:
    """Every event through the sink's Write path, in batches of BATCH_EVENTS."""
    opened = sink(config)
    await opened.open()
    try:
        for seq, start in enumerate(range(0, len(events), BATCH_EVENTS)):
            batch = BatchWrite(f"plans-{seq}", "plans", seq, events[start : start + BATCH_EVENTS])
            outcome = await opened.write(batch)
            if outcome.written != len(batch.events):
                raise RuntimeError(f"batch {batch.batch_id} stored {outcome.written} events")
    finally:
        await opened.close()


async def connect(config: PostgresSection) -> asyncpg.Connection:
    """A session like the sink's own (schema on the search path, UTC, timeouts)."""
    conn: asyncpg.Connection = await asyncpg.connect(config.dsn, **session_options(config))
    return conn


async def fill(
    config: PostgresSection,
    count: int,
    end_ns: int,
    span_ns: int = SPAN_NS,
    vacuum: bool = False,
) -> Loaded:
    """Create the schema by opening the sink, write ``count`` events over the ``span_ns``
    before the UTC midnight at or before ``end_ns``, ANALYZE (as autovacuum soon would
    after such a load); ``vacuum`` also merges the GIN indexes' pending lists, as a later
    autovacuum would (until then each scan of a GIN index reads its pending list too)."""
    midnight = midnight_utc(end_ns)
    events = await marked_events(count, midnight, span_ns)
    await write_all(config, events)
    conn = await connect(config)
    try:
        await conn.execute("VACUUM (ANALYZE) events" if vacuum else "ANALYZE events")
    finally:
        await conn.close()
    return loaded_from(events, midnight)


async def explain(
    conn: asyncpg.Connection, statement: Statement, options: str = "FORMAT JSON"
) -> str:
    """EXPLAIN (``options``) of ``statement`` with its own parameters: the custom plan a
    statement gets for its first CUSTOM_PLANS executions."""
    rows = await conn.fetch(f"EXPLAIN ({options}) {statement.sql}", *statement.params)
    return "\n".join(str(row[0]) for row in rows)


def plan_nodes(plan: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


@dataclass(frozen=True)
class Scan:
    """One scan node of a plan: its type, and the index (on ``events``) or table it reads."""

    node_type: str
    target: str
    index: bool


async def scans(conn: asyncpg.Connection, statement: Statement) -> list[Scan]:
    """The scans of the custom plan of ``statement``; a partition's index is named by the
    index on ``events`` it belongs to (``events_attributes``, not
    ``events_p20261201_attributes_idx``), a table by its own name."""
    plan = json.loads(await explain(conn, statement))[0]["Plan"]
    nodes = [n for n in plan_nodes(plan) if "Index Name" in n or "Relation Name" in n]
    names = sorted({n["Index Name"] for n in nodes if "Index Name" in n})
    rows = await conn.fetch(
        "SELECT name, COALESCE(pg_partition_root(name::regclass)::text, name) "
        "FROM unnest($1::text[]) AS name",
        names,
    )
    parent = {row[0]: row[1] for row in rows}
    return [
        Scan(n["Node Type"], parent[n["Index Name"]], True)
        if "Index Name" in n
        else Scan(n["Node Type"], n["Relation Name"], False)
        for n in nodes
    ]


async def indexes_used(conn: asyncpg.Connection, statement: Statement) -> str:
    """The indexes the custom plan of ``statement`` reads, joined by "+", or "none"."""
    used = sorted({scan.target for scan in await scans(conn, statement) if scan.index})
    return " + ".join(used) or "none"


async def index_sizes(conn: asyncpg.Connection) -> dict[str, int]:
    """Bytes of each index on ``events``, summed over its partitions."""
    rows = await conn.fetch(
        "SELECT pg_partition_root(c.oid)::text, SUM(pg_relation_size(c.oid))::bigint "
        "FROM pg_class c WHERE c.relkind = 'i' AND c.relispartition "
        "AND c.relnamespace = current_schema()::regnamespace "
        "AND pg_partition_root(c.oid) IS NOT NULL GROUP BY 1 ORDER BY 1"
    )
    return {str(row[0]): int(row[1]) for row in rows}


@dataclass(frozen=True)
class CachedPlan:
    """The plan of the last of several executions of one prepared statement."""

    generic: bool
    plan: str


async def cached_plan(
    config: PostgresSection, statement: Statement, executions: int = 2 * CUSTOM_PLANS
) -> CachedPlan:
    """Run ``statement`` ``executions`` times as one prepared statement on a new session,
    as asyncpg's statement cache does with each read of the sink: the last execution's
    plan with its actual times (auto_explain, whose LOAD needs a superuser), and whether
    it was a generic one."""
    conn = await connect(config)
    try:
        notices: list[str] = []
        conn.add_log_listener(lambda _, message: notices.append(message.message))
        for setting in AUTO_EXPLAIN:
            await conn.execute(setting)
        prepared = await conn.prepare(statement.sql)
        for _ in range(executions - 1):
            await prepared.fetch(*statement.params)
        before = await _generic_plans(conn, prepared)
        notices.clear()
        await prepared.fetch(*statement.params)
        await asyncio.sleep(0)  # asyncpg hands notices over with call_soon
        plan = "\n".join(notices).partition("plan:\n")[2]
        return CachedPlan(await _generic_plans(conn, prepared) > before, plan)
    finally:
        await conn.close()


async def _generic_plans(conn: asyncpg.Connection, prepared: asyncpg.PreparedStatement) -> int:
    count: int = await conn.fetchval(
        "SELECT generic_plans FROM pg_prepared_statements WHERE name = $1", prepared.get_name()
    )
    return count
