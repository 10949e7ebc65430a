"""The query plans of selections by attribute and tag, and the indexes they use.

Run: .venv/bin/python -m bench.query_plans [--events 200000] [--hours 48] [--calls 10]
     [--vacuum] [--analyze-rounds 10]

Starts its own throwaway PostgreSQL (the test suite's tests/pg_server.py), fills
``events`` through the storage sink's own Write path with realistic syslog spread over
--hours (two whole days by default), a few events carrying a rare attribute or tag
(bench/plans.py, shared with tests/storage_svc/test_storage_pg_query_plans.py), ANALYZEs
it, and prints for each selection, with the SQL and parameters the sink itself builds:

- the scans of its plan, per index (a partition's index under the name of the index on
  ``events`` it belongs to);
- EXPLAIN (ANALYZE, BUFFERS): the custom plan, which a prepared statement gets for its
  first five executions;
- the plan of the tenth execution of the same prepared statement (asyncpg prepares and
  caches every read), from auto_explain: PostgreSQL may have switched to a generic plan;
- the milliseconds of --calls PostgresSink.query calls in a row on one fresh sink;

then the plans of the sink's other selected reads (AggregateEvents, TailEvents' replay), and
which indexes each selection's custom plan uses after each of --analyze-rounds ANALYZEs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter

import asyncpg

from bench.pg import server_version, start_server
from bench.plans import (
    HOUR_NS,
    PAGE,
    Case,
    Loaded,
    cached_plan,
    cases,
    connect,
    explain,
    fill,
    index_sizes,
    indexes_used,
    other_reads,
    scans,
    sink,
)
from mesh.timeutil import now_ns
from storage_svc.config import PostgresSection
from storage_svc.sinks.postgres_rows import Statement
from storage_svc.sinks.postgres_schema import EVENTS_INDEXES

ANALYZED = "ANALYZE, BUFFERS"


def heading(title: str) -> None:
    print(f"\n=== {title}")


async def show_indexes(conn: asyncpg.Connection) -> None:
    heading("indexes on events (size summed over the partitions)")
    sizes = await index_sizes(conn)
    for statement in EVENTS_INDEXES:
        name = statement.split()[2]
        print(f"{sizes.get(name, 0) / 2**20:8.1f} MiB  {statement}")


async def show_scans(conn: asyncpg.Connection, statement: Statement) -> None:
    counted = Counter((scan.node_type, scan.target) for scan in await scans(conn, statement))
    listed = ", ".join(f"{kind} on {target} x{n}" for (kind, target), n in counted.items())
    print(f"scans: {listed}")


async def show_read(conn: asyncpg.Connection, name: str, statement: Statement) -> None:
    heading(name)
    print(f"SQL: {statement.sql}")
    print(f"parameters: {statement.params}")
    await show_scans(conn, statement)
    print(await explain(conn, statement, ANALYZED))


async def show_case(
    conn: asyncpg.Connection, config: PostgresSection, case: Case, calls: int
) -> None:
    await show_read(
        conn, f"{case.name}: {len(case.expected_ids)} matching events", case.statement()
    )
    cached = await cached_plan(config, case.statement())
    kind = "a generic plan" if cached.generic else "still a custom plan"
    print(f"\n--- the 10th execution of the prepared statement: {kind}")
    print(cached.plan)
    print(
        f"--- PostgresSink.query, {calls} calls in a row: {await query_times(config, case, calls)}"
    )


async def query_times(config: PostgresSection, case: Case, calls: int) -> str:
    """Milliseconds of each of ``calls`` QueryEvents pages on one fresh sink, and a check
    that each found the expected events."""
    opened = sink(config)
    await opened.open()
    millis = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            page = await opened.query(case.selection, PAGE)
            millis.append((time.perf_counter() - started) * 1000)
            if tuple(event.id for event in page.events) != case.first_page:
                raise RuntimeError(f"{case.name}: QueryEvents found other events")
    finally:
        await opened.close()
    first, later = millis[:5], millis[5:]
    summary = f"median of calls 1-5 {statistics.median(first):.1f} ms"
    if later:
        summary += f", of calls 6-{calls} {statistics.median(later):.1f} ms"
    return f"{summary} ({' '.join(f'{ms:.1f}' for ms in millis)})"


async def show_stability(conn: asyncpg.Connection, loaded: Loaded, rounds: int) -> None:
    """Which indexes each selection's custom plan uses after each of ``rounds`` ANALYZEs:
    a partition larger than the sample ANALYZE reads gets other statistics each time."""
    heading(f"indexes the custom plans use, over {rounds} ANALYZEs")
    chosen: dict[str, Counter[str]] = {name: Counter() for name in cases(loaded)}
    for _ in range(rounds):
        await conn.execute("ANALYZE events")
        for name, case in cases(loaded).items():
            chosen[name][await indexes_used(conn, case.statement())] += 1
    for name, counted in chosen.items():
        print(f"{name}: " + ", ".join(f"{used} {n}/{rounds}" for used, n in counted.most_common()))


async def show_all(config: PostgresSection, loaded: Loaded, args: argparse.Namespace) -> None:
    conn = await connect(config)
    try:
        await show_indexes(conn)
        for case in cases(loaded).values():
            await show_case(conn, config, case, args.calls)
        for name, statement in other_reads(loaded).items():
            await show_read(conn, name, statement)
        if args.analyze_rounds:
            await show_stability(conn, loaded, args.analyze_rounds)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    server = start_server(durable=False)
    try:
        store = server.fresh_schema()
        config = PostgresSection(dsn=store.dsn, schema_name=store.schema)
        started = time.perf_counter()
        loaded = await fill(config, args.events, now_ns(), args.hours * HOUR_NS, args.vacuum)
        then = "VACUUM (ANALYZE)" if args.vacuum else "ANALYZE"
        print(
            f"{await server_version(server)}, {loaded.rows:,} events over {args.hours} h "
            f"written through PostgresSink.write, then {then}, in "
            f"{time.perf_counter() - started:.1f} s"
        )
        await show_all(config, loaded, args)
    finally:
        server.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="rows written")
    parser.add_argument("--hours", type=int, default=48, help="time the rows cover, to midnight")
    parser.add_argument("--calls", type=int, default=10, help="QueryEvents calls timed per case")
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM (ANALYZE) after the load: the GIN pending lists merged, as by autovacuum",
    )
    parser.add_argument(
        "--analyze-rounds", type=int, default=10, help="ANALYZEs to count plan choices over"
    )
    asyncio.run(main(parser.parse_args()))
