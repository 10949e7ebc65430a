"""The entities sink: the entity graph of each stored event, written to tables of the primary
store (see ``storage_svc.entities``). A Neo4j writer could sit behind the same interface;
none is shipped, because no test here could run one."""

from __future__ import annotations

import time

from storage_svc.entities import EntityStore, edges_of
from storage_svc.sinks.base import BatchWrite, SecondarySink, WriteOutcome
from storage_svc.sinks_config import EntitiesSinkSection


class EntitySink(SecondarySink):
    kind = "entities"

    def __init__(self, settings: EntitiesSinkSection, store: EntityStore) -> None:
        super().__init__(settings.name, settings.down_after_failures)
        self.settings = settings
        self.store = store

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def deliver(self, batch: BatchWrite) -> WriteOutcome:
        started = time.perf_counter()
        await self.store.add(edges_of(batch.events, self.settings))
        return WriteOutcome(False, len(batch.events), 0, time.perf_counter() - started)
