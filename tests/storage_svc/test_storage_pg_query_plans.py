"""PostgreSQL query plans: selections by attribute or tag read the jsonb_path_ops GIN
indexes (events_attributes, events_tags), and the sink returns the events they select.

One schema for the module, created by opening the real PostgresSink and filled through
its Write path (bench/plans.py, whose plans ``python -m bench.query_plans`` prints):
ROWS realistic syslog events over one day partition, a few with a rare attribute, a tag
or a needle attribute, then ANALYZE. The plans explained are those of the SQL the sink
builds (``postgres_rows.page_statement``) with its own parameters. ANALYZE reads every
row of a partition of up to 30,000 rows (default_statistics_target 100), so statistics
and plans are the same on every run; the README shows how a bigger partition's plans
vary with ANALYZE's sample.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pg_server import PgServer

from bench.plans import (
    CUSTOM_PLANS,
    HOUR_NS,
    PAGE,
    RARE_ATTRIBUTES,
    RARE_TAGS,
    Loaded,
    Scan,
    cases,
    connect,
    fill,
    scans,
    sink,
)
from mesh.timeutil import NS_PER_S, now_ns
from storage_svc.config import PostgresSection
from storage_svc.query import EventFilter, GroupBy
from storage_svc.sinks.postgres_rows import Statement
from storage_svc.sinks.postgres_schema import partition_name

ROWS = 30_000
SPAN_NS = 24 * HOUR_NS
CASES = ("attribute", "attribute, a needle", "tag", "attribute + time window")


@dataclass(frozen=True)
class Filled:
    config: PostgresSection
    loaded: Loaded

    def day(self, offset: int = 0) -> str:
        """The name of the partition the rows are in, or of one ``offset`` days later."""
        start = dt.datetime.fromtimestamp((self.loaded.end_ns - SPAN_NS) / NS_PER_S, dt.UTC)
        return partition_name(start.date() + dt.timedelta(days=offset))


@pytest.fixture(scope="module")
def filled(pg_server: PgServer) -> Iterator[Filled]:
    store = pg_server.fresh_schema()
    config = PostgresSection(dsn=store.dsn, schema_name=store.schema)
    yield Filled(config, asyncio.run(fill(config, ROWS, now_ns(), SPAN_NS)))
    asyncio.run(_drop_schema(config))


async def _drop_schema(config: PostgresSection) -> None:
    conn = await connect(config)
    try:
        await conn.execute(f'DROP SCHEMA "{config.schema_name}" CASCADE')
    finally:
        await conn.close()


async def plan_scans(filled: Filled, statement: Statement) -> list[Scan]:
    conn = await connect(filled.config)
    try:
        return await scans(conn, statement)
    finally:
        await conn.close()


@pytest.mark.parametrize("name", CASES)
async def test_a_page_by_attribute_or_tag_is_read_from_its_gin_index(
    filled: Filled, name: str
) -> None:
    case = cases(filled.loaded)[name]
    found = await plan_scans(filled, case.statement())

    index = case.index
    assert Scan("Bitmap Index Scan", index, index=True) in found
    assert Scan("Seq Scan", filled.day(), index=False) not in found


async def test_the_time_window_skips_the_partitions_outside_it(filled: Filled) -> None:
    found = await plan_scans(filled, cases(filled.loaded)["attribute + time window"].statement())

    tables = {scan.target for scan in found if not scan.index}
    # The window ends at the midnight that starts the next day's partition (ts <= end).
    assert tables == {filled.day(), filled.day(1)}


@pytest.mark.parametrize("name", CASES)
async def test_the_sink_returns_the_selected_events_newest_first(filled: Filled, name: str) -> None:
    case = cases(filled.loaded)[name]
    opened = sink(filled.config)
    await opened.open()
    try:
        # Past the executions PostgreSQL plans for their parameters, into the cached plan.
        pages = [await opened.query(case.selection, PAGE) for _ in range(2 * CUSTOM_PLANS)]
    finally:
        await opened.close()

    assert 0 < len(case.expected_ids) <= PAGE.size
    assert list(case.first_page) == filled.loaded.newest_first(case.expected_ids)
    for page in pages:
        assert tuple(event.id for event in page.events) == case.first_page
        assert page.next_position is None


async def test_counts_and_a_tail_replay_select_the_same_events(filled: Filled) -> None:
    loaded = filled.loaded
    opened = sink(filled.config)
    await opened.open()
    try:
        counts = await opened.aggregate(
            EventFilter(attributes=RARE_ATTRIBUTES), HOUR_NS, GroupBy.NONE
        )
        replayed = await opened.events_after(0, EventFilter(tags=RARE_TAGS), 1000)
    finally:
        await opened.close()

    assert sum(bucket.count for bucket in counts) == len(loaded.rare_attribute_ids)
    assert {stored.event.id for stored in replayed} == loaded.rare_tag_ids
    assert [stored.seq for stored in replayed] == sorted(stored.seq for stored in replayed)


@pytest.mark.parametrize("name", CASES)
async def test_repeated_reads_are_planned_for_their_own_parameters(
    filled: Filled, name: str
) -> None:
    # PostgreSQL may keep a generic plan for a prepared statement after five executions;
    # for a rare attribute that plan walks the time index and filters every row instead
    # of asking the GIN index (the README's plans: 7.5 ms became 53.6 ms).
    case = cases(filled.loaded)[name]
    one_connection = filled.config.model_copy(
        update={"pool_min_size": 1, "pool_max_size": 1, "max_concurrent_writes": 1}
    )
    opened = sink(one_connection)
    await opened.open()
    try:
        for _ in range(2 * CUSTOM_PLANS):
            await opened.query(case.selection, PAGE)
        sql = case.statement().sql
        async with opened._open_pool().acquire() as conn:
            generic, custom = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement = $1",
                sql,
            )
    finally:
        await opened.close()
    assert (generic, custom) == (0, 2 * CUSTOM_PLANS)
