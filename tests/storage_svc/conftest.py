"""A storage service on free ports with mTLS, over SQLite in the test's tmp_path or over a
fresh database on the suite's own PostgreSQL server; a private nats-server for NATS tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats_server import nats_server
from pg_server import PgSchema, PgServer, pg_server
from storage_helpers import StorageClients, Store, start_storage
from support import Pki

from storage_svc import StorageApp

__all__ = ["nats_server", "pg_server"]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def pg_schema(pg_server: PgServer) -> PgSchema:
    """A new, empty schema on the suite's PostgreSQL server."""
    return pg_server.fresh_schema()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    """Each backend in turn; a test pins one with parametrize("store", [...], indirect=True)."""
    if request.param == "sqlite":
        path: Path = request.getfixturevalue("db_path")
        return path
    schema: PgSchema = request.getfixturevalue("pg_schema")
    return schema


@pytest.fixture
async def storage(pki: Pki, store: Store) -> AsyncIterator[StorageApp]:
    async with start_storage(pki, store) as app:
        yield app


@pytest.fixture
async def clients(pki: Pki, storage: StorageApp) -> AsyncIterator[StorageClients]:
    async with StorageClients.connect(pki, storage) as opened:
        yield opened
