"""The entity graph (the original ETL service's Neo4j model, kept in tables of the primary
store): Host, User, Process and Container entities taken from each event, each linked to
the event by a GENERATED (host, container) or EXECUTED (user, process) edge.

An entity is named by its kind and key; two entities are neighbours over a time range when
events of that range are linked to both. Writing the same event again adds nothing, so the
outbox's at-least-once delivery leaves the graph exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gen.edgebot.v1 import event_pb2, storage_pb2
from mesh.timeutil import is_set, ts_to_ns
from storage_svc.query import (
    InvalidArgument,
    PageRequest,
    SortOrder,
    decode_page_token,
    page_size,
)
from storage_svc.sinks.base import QueryPage
from storage_svc.sinks_config import EntitiesSinkSection


class EntityKind(StrEnum):
    HOST = "host"
    USER = "user"
    PROCESS = "process"
    CONTAINER = "container"


class Relation(StrEnum):
    GENERATED = "generated"
    EXECUTED = "executed"


RELATION_OF = {
    EntityKind.HOST: Relation.GENERATED,
    EntityKind.CONTAINER: Relation.GENERATED,
    EntityKind.USER: Relation.EXECUTED,
    EntityKind.PROCESS: Relation.EXECUTED,
}


@dataclass(frozen=True)
class EntityRef:
    kind: EntityKind
    key: str


@dataclass(frozen=True)
class Edge:
    """Entity ``kind``/``key`` is linked to event ``event_id`` (at ``ts_ns``)."""

    kind: EntityKind
    key: str
    ts_ns: int
    event_id: str

    @property
    def relation(self) -> Relation:
        return RELATION_OF[self.kind]


@dataclass(frozen=True)
class Entity:
    kind: EntityKind
    key: str
    first_ns: int
    last_ns: int

    @property
    def relation(self) -> Relation:
        return RELATION_OF[self.kind]


@dataclass(frozen=True)
class Neighbor:
    entity: Entity
    shared_events: int


@dataclass(frozen=True)
class TimeRange:
    """[start_ns, end_ns); None: unbounded."""

    start_ns: int | None = None
    end_ns: int | None = None


def _first(attributes: Mapping[str, str], keys: Sequence[str]) -> str:
    for key in keys:
        value = attributes.get(key, "")
        if value:
            return value
    return ""


def process_key(host: str, name: str, pid: str) -> str:
    return f"{host}/{name}[{pid}]" if pid else f"{host}/{name}"


def entities_of(
    event: event_pb2.Event, settings: EntitiesSinkSection
) -> list[tuple[EntityKind, str]]:
    attributes = event.attributes
    found = [(EntityKind.HOST, event.host)]
    found.append((EntityKind.USER, _first(attributes, settings.user_attributes)))
    pid = _first(attributes, settings.pid_attributes)
    named = _first(attributes, settings.process_name_attributes)
    if pid or named:
        found.append((EntityKind.PROCESS, process_key(event.host, named or event.service, pid)))
    found.append((EntityKind.CONTAINER, _first(attributes, settings.container_attributes)))
    limit = settings.max_key_bytes
    return [(kind, key) for kind, key in found if key and len(key.encode()) <= limit]


def edges_of(events: Sequence[event_pb2.Event], settings: EntitiesSinkSection) -> list[Edge]:
    edges = []
    for event in events:
        ts_ns = ts_to_ns(event.time)
        edges += [Edge(kind, key, ts_ns, event.id) for kind, key in entities_of(event, settings)]
    return edges


def entity_rows(edges: Sequence[Edge]) -> list[Entity]:
    """One row per entity with the earliest and latest time of its edges, sorted by
    (kind, key) so that concurrent writers lock rows in the same order."""
    spans: dict[tuple[EntityKind, str], tuple[int, int]] = {}
    for edge in edges:
        first, last = spans.get((edge.kind, edge.key), (edge.ts_ns, edge.ts_ns))
        spans[(edge.kind, edge.key)] = (min(first, edge.ts_ns), max(last, edge.ts_ns))
    return [Entity(kind, key, first, last) for (kind, key), (first, last) in sorted(spans.items())]


class EntityStore(Protocol):
    """Where the graph lives: tables of the primary store (SQLite or PostgreSQL)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, edges: Sequence[Edge]) -> None:
        """Store the edges and their entities in one transaction (idempotent)."""

    async def entity(self, ref: EntityRef) -> Entity | None: ...

    async def count(self, ref: EntityRef, span: TimeRange) -> int: ...

    async def events(self, ref: EntityRef, span: TimeRange, page: PageRequest) -> QueryPage:
        """The entity's events within ``span``, newest first, from ``page.after``."""

    async def neighbors(self, ref: EntityRef, span: TimeRange, limit: int) -> list[Neighbor]:
        """Entities linked to the same events within ``span``, most shared first."""


KINDS = {
    storage_pb2.ENTITY_KIND_HOST: EntityKind.HOST,
    storage_pb2.ENTITY_KIND_USER: EntityKind.USER,
    storage_pb2.ENTITY_KIND_PROCESS: EntityKind.PROCESS,
    storage_pb2.ENTITY_KIND_CONTAINER: EntityKind.CONTAINER,
}


@dataclass(frozen=True)
class EntityQuery:
    ref: EntityRef
    span: TimeRange
    page: PageRequest
    neighbors: int
    """How many neighbours to find (0 on pages after the first)."""


@dataclass(frozen=True)
class EntityAnswer:
    entity: Entity
    page: QueryPage
    event_count: int
    neighbors: list[Neighbor]


def parse_entity_query(
    request: storage_pb2.QueryEntitiesRequest, settings: EntitiesSinkSection
) -> EntityQuery:
    kind = KINDS.get(request.entity.kind)
    if kind is None:
        raise InvalidArgument("entity.kind", "required: host, user, process or container")
    if not request.entity.key:
        raise InvalidArgument("entity.key", "required")
    span = TimeRange(
        ts_to_ns(request.start_time) if is_set(request.start_time) else None,
        ts_to_ns(request.end_time) if is_set(request.end_time) else None,
    )
    if span.start_ns is not None and span.end_ns is not None and span.end_ns <= span.start_ns:
        raise InvalidArgument("end_time", "must be after start_time")
    if request.max_neighbors < 0:
        raise InvalidArgument("max_neighbors", "must not be negative")
    size = page_size(request.page_size, settings.default_page_size, settings.max_page_size)
    after = decode_page_token(request.page_token, SortOrder.NEWEST_FIRST)
    wanted = request.max_neighbors or settings.default_neighbors
    neighbors = 0 if after is not None else min(wanted, settings.max_neighbors)
    return EntityQuery(
        EntityRef(kind, request.entity.key),
        span,
        PageRequest(SortOrder.NEWEST_FIRST, size, after),
        neighbors,
    )


class EntityGraph:
    """The read side of the graph, over the same store the entities sink writes."""

    def __init__(self, store: EntityStore, settings: EntitiesSinkSection) -> None:
        self.store = store
        self.settings = settings

    async def query(self, query: EntityQuery) -> EntityAnswer | None:
        """The entity's page of events, count and neighbours; None if it was never seen."""
        entity = await self.store.entity(query.ref)
        if entity is None:
            return None
        page = await self.store.events(query.ref, query.span, query.page)
        count = await self.store.count(query.ref, query.span)
        neighbors = []
        if query.neighbors:
            neighbors = await self.store.neighbors(query.ref, query.span, query.neighbors)
        return EntityAnswer(entity, page, count, neighbors)
