"""A storage service on free ports with mTLS, over a SQLite file in the test's tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storage_helpers import StorageClients, start_storage
from support import Pki

from storage_svc import StorageApp


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
async def storage(pki: Pki, db_path: Path) -> AsyncIterator[StorageApp]:
    async with start_storage(pki, db_path) as app:
        yield app


@pytest.fixture
async def clients(pki: Pki, storage: StorageApp) -> AsyncIterator[StorageClients]:
    async with StorageClients.connect(pki, storage) as opened:
        yield opened
