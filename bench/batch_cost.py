"""The fixed cost of one small batch where it is kept: the edge spool's three commits and
the PostgreSQL sink's write, each measured alone (no gRPC), one batch at a time.

Run: .venv/bin/python -m bench.batch_cost [--batch 25] [--batches 2000] [--rounds 3]

- spool: append, form and ack of ``--batches`` batches of ``--batch`` events in a fresh
  spool (SQLite, WAL); wall time per step and process CPU per batch, as it runs now and
  with every commit fsynced (``synchronous=FULL`` throughout, the previous behaviour);
- sink: ``PostgresSink.write`` of the same batches into a throwaway PostgreSQL 15 with
  fsync on; wall time per write, the sink's CPU and the database backends' CPU per batch,
  through ``store_batches`` (one round trip, what small batches take) and through the COPY
  transaction (what large batches take).

Best of ``--rounds`` by CPU (other load on a small machine only slows runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import asyncpg

from bench.pg import PgServer, start_server
from bench.storage_pg_bench import batches, make_events
from edge_agent import spool as spool_module
from edge_agent.spool import Spool
from gen.edgebot.v1 import event_pb2
from storage_svc.config import PostgresSection
from storage_svc.sinks import postgres as postgres_module
from storage_svc.sinks.base import BatchWrite
from storage_svc.sinks.postgres import PostgresSink

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Cost:
    name: str
    cpu_us: float  # this process, per batch
    wall_ms: dict[str, tuple[float, float]]  # step -> (p50, p99)
    backend_cpu_us: float | None = None

    def line(self) -> str:
        steps = ", ".join(
            f"{step} {p50:.2f} / {p99:.2f} ms" for step, (p50, p99) in self.wall_ms.items()
        )
        backend = f", PostgreSQL {self.backend_cpu_us:,.0f} µs" if self.backend_cpu_us else ""
        return f"  {self.name:<34} CPU/batch {self.cpu_us:,.0f} µs{backend}; p50 / p99: {steps}"


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return 1000 * statistics.median(ordered), 1000 * ordered[int(len(ordered) * 0.99)]


@contextlib.contextmanager
def every_commit_fsynced() -> Iterator[None]:
    original = spool_module._transaction

    def durable(conn: object, durable: bool = True) -> contextlib.AbstractContextManager[object]:
        return original(conn, True)  # type: ignore[arg-type]

    with mock.patch.object(spool_module, "_transaction", durable):
        yield


async def spool_cost(name: str, groups: Sequence[Sequence[event_pb2.Event]]) -> Cost:
    steps: dict[str, list[float]] = {"append": [], "form": [], "ack": []}
    with tempfile.TemporaryDirectory(prefix="edgebot-bench-", dir=os.getcwd()) as work:
        spool = Spool(Path(work) / "spool.db", 1 << 32)
        await spool.open()
        try:
            started = time.process_time()
            for group in groups:
                began = time.perf_counter()
                await spool.append(group)
                formed_at = time.perf_counter()
                batch = await spool.form_batch(len(group), 1 << 24)
                acked_at = time.perf_counter()
                assert batch is not None
                await spool.ack(batch.batch_id)
                done = time.perf_counter()
                steps["append"].append(formed_at - began)
                steps["form"].append(acked_at - formed_at)
                steps["ack"].append(done - acked_at)
            cpu = time.process_time() - started
        finally:
            await spool.close()
    walls = {step: percentiles(values) for step, values in steps.items()}
    return Cost(name, 1e6 * cpu / len(groups), walls)


async def backend_cpu_s(conn: asyncpg.Connection) -> float:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'edgebot-storage'"
    )
    return cpu_s_of([row["pid"] for row in rows])


def cpu_s_of(pids: list[int]) -> float:
    """User + system CPU seconds of these processes, from /proc (one that ended counts 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICKS_PER_S


def write_of(number: int, group: Sequence[event_pb2.Event]) -> BatchWrite:
    return BatchWrite(
        batch_id=f"bench-{number}", agent_id="bench", seq=number, events=group,
        dead_letters=(), quarantined=(),
    )  # fmt: skip


async def sink_cost(
    name: str, server: PgServer, groups: Sequence[Sequence[event_pb2.Event]], by_function: bool
) -> Cost:
    store = server.fresh_schema()
    sink = PostgresSink(
        PostgresSection(dsn=store.dsn, schema_name=store.schema), lambda _: None, lambda: False
    )
    chooser: Callable[[object], bool] = (
        postgres_module._stored_by_one_statement if by_function else lambda _writes: False
    )
    await sink.open()
    monitor = await asyncpg.connect(store.dsn)
    walls: list[float] = []
    try:
        with mock.patch.object(postgres_module, "_stored_by_one_statement", chooser):
            await sink.write(write_of(0, groups[0]))  # partitions and prepared statements
            cpu, backend = time.process_time(), await backend_cpu_s(monitor)
            for number, group in enumerate(groups[1:], 1):
                began = time.perf_counter()
                await sink.write(write_of(number, group))
                walls.append(time.perf_counter() - began)
            cpu = time.process_time() - cpu
            backend = await backend_cpu_s(monitor) - backend
    finally:
        await monitor.close()
        await sink.close()
    count = len(groups) - 1
    return Cost(name, 1e6 * cpu / count, {"write": percentiles(walls)}, 1e6 * backend / count)


def best(costs: list[Cost]) -> Cost:
    return min(costs, key=lambda cost: cost.cpu_us + (cost.backend_cpu_us or 0.0))


async def main(args: argparse.Namespace) -> None:
    groups = batches(make_events(args.batch * args.batches), args.batch)
    print(f"batches of {args.batch} events, {args.batches} batches, one at a time, "
          f"best of {args.rounds}; {os.cpu_count()} cores")  # fmt: skip
    now = [await spool_cost("spool, as it runs", groups) for _ in range(args.rounds)]
    with every_commit_fsynced():
        before = [await spool_cost("spool, every commit fsynced", groups)
                  for _ in range(args.rounds)]  # fmt: skip
    print(best(now).line())
    print(best(before).line())
    server = start_server(durable=True)
    try:
        function = [await sink_cost("sink, store_batches (1 round trip)", server, groups, True)
                    for _ in range(args.rounds)]  # fmt: skip
        copy = [await sink_cost("sink, COPY transaction", server, groups, False)
                for _ in range(args.rounds)]  # fmt: skip
    finally:
        server.remove()
    print(best(function).line())
    print(best(copy).line())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=25, help="events per batch")
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
