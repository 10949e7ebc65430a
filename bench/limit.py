"""The limit: raw binary COPY of the rows EdgeBot stores, into the table storage creates.

The rows are the benchmark's own syslog (bench/corpus.py) parsed by the edge parser and
run through the default pipeline in this process, so they are byte for byte what the end
to end run stores. Each configuration (batch size x writers) copies into a fresh schema
migrated by the storage sink (same columns, partitions and indexes); the best one is the
limit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bench.corpus import LineMaker, device_name, load_templates
from bench.pg import EVENT_COLUMNS, PgServer, event_records, prepared_schema, raw_copy_rate
from edge_agent.parsers.syslog import Received, parse_syslog
from gen.edgebot.v1 import event_pb2
from mesh.timeutil import now_ns
from pipeline_svc.config import PipelineSection
from pipeline_svc.pipeline import Pipeline


@dataclass(frozen=True)
class CopyResult:
    batch: int
    writers: int
    events_per_s: float


async def stored_events(count: int, devices: int = 8) -> list[event_pb2.Event]:
    """``count`` events as storage receives them: parsed at the edge, then the pipeline."""
    templates = load_templates()
    makers = [LineMaker(templates, device_name(i), seed=i) for i in range(devices)]
    pipeline = Pipeline.from_config(PipelineSection())
    events: list[event_pb2.Event] = []
    for chunk in range(0, count, 1000):
        received = Received(now_ns(), "10.0.0.1", "bench-000/syslog_udp")
        lines = [makers[(chunk + n) % devices].line() for n in range(min(1000, count - chunk))]
        result = await pipeline.run([parse_syslog(line, received) for line in lines])
        events += result.events
    await pipeline.close()
    return events


async def measure_limit(
    server: PgServer, count: int, batches: list[int], writers: list[int], rounds: int
) -> list[CopyResult]:
    events = await stored_events(count)
    results = []
    for batch, writer_count in itertools.product(batches, writers):
        chunks = event_records(events, batch)
        best = 0.0
        for _ in range(rounds):
            store = await prepared_schema(server)
            best = max(best, await raw_copy_rate(store, chunks, EVENT_COLUMNS, writer_count))
        results.append(CopyResult(batch, writer_count, round(best, 1)))
    return results


def best(results: list[CopyResult]) -> CopyResult:
    return max(results, key=lambda r: r.events_per_s)
