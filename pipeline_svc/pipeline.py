"""Runs a batch through the configured processors and keeps their statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gen.edgebot.v1 import event_pb2
from mesh.config import ConfigError
from pipeline_svc.config import PipelineSection
from pipeline_svc.processors import Item, Outcome, Processor, create
from pipeline_svc.processors.base import Quarantine, Rejection

REDACTION = "redaction"
# Stages that must never see unredacted events; redaction must come before any of them.
AFTER_REDACTION_ONLY = frozenset({"llm"})


@dataclass
class ProcessorTotals:
    processed: int = 0
    modified: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass
class BatchResult:
    events: list[event_pb2.Event]
    rejected: list[Rejection]
    quarantined: list[Quarantine]
    per_processor: list[tuple[str, ProcessorTotals]]


@dataclass
class Pipeline:
    processors: list[Processor]
    totals: dict[str, ProcessorTotals] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: PipelineSection) -> Pipeline:
        processors = []
        for position, entry in enumerate(section.processors):
            if not entry.enabled:
                continue
            key = f"pipeline.processors.{position}"
            processors.append(create(entry.type, entry.name or entry.type, entry.settings(), key))
        check_order(processors)
        return cls(processors, {p.name: ProcessorTotals() for p in processors})

    async def run(self, events: list[event_pb2.Event]) -> BatchResult:
        live = [Item(index, event) for index, event in enumerate(events)]
        rejected: list[Rejection] = []
        quarantined: list[Quarantine] = []
        per_processor = []
        for processor in self.processors:
            batch_totals = ProcessorTotals(processed=len(live))
            start = time.perf_counter()
            outcome = await processor.process_async(live)
            batch_totals.seconds = time.perf_counter() - start
            batch_totals.modified = outcome.modified
            batch_totals.errors = len(outcome.rejected) + len(outcome.quarantined)
            live = _without_removed(live, outcome)
            rejected.extend(outcome.rejected)
            quarantined.extend(outcome.quarantined)
            per_processor.append((processor.name, batch_totals))
            self._accumulate(processor.name, batch_totals)
        return BatchResult([item.event for item in live], rejected, quarantined, per_processor)

    async def close(self) -> None:
        for processor in self.processors:
            await processor.close()

    def _accumulate(self, name: str, batch: ProcessorTotals) -> None:
        total = self.totals[name]
        total.processed += batch.processed
        total.modified += batch.modified
        total.errors += batch.errors
        total.seconds += batch.seconds


def _without_removed(live: list[Item], outcome: Outcome) -> list[Item]:
    if not outcome.rejected and not outcome.quarantined:
        return live
    removed = {r.index for r in outcome.rejected} | {q.index for q in outcome.quarantined}
    return [item for item in live if item.index not in removed]


def check_order(processors: list[Processor]) -> None:
    """Refuse a pipeline in which anything could see or copy unredacted events.

    Redaction comes first, as one block: a redaction processor after an enrichment would
    let that enrichment copy text (service names, resolved host names, tags) before it is
    masked. An LLM stage needs redaction before it.
    """
    redaction_seen = False
    first_other: tuple[int, Processor] | None = None
    for position, processor in enumerate(processors):
        if processor.stage == REDACTION:
            redaction_seen = True
            if first_other is not None:
                other_position, other = first_other
                raise ConfigError(
                    f"pipeline.processors.{position}: {processor.name!r} (redaction) must come "
                    f"before {other.name!r} ({other.stage}) at pipeline.processors."
                    f"{other_position}; redaction runs first"
                )
        elif first_other is None:
            first_other = (position, processor)
        if processor.stage in AFTER_REDACTION_ONLY and not redaction_seen:
            raise ConfigError(
                f"pipeline.processors.{position}: {processor.name!r} ({processor.stage}) "
                "must come after a redaction processor"
            )
