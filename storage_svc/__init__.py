"""The storage service: the primary sink (embedded SQLite or PostgreSQL) and the read path."""

from storage_svc.config import StorageServiceConfig
from storage_svc.server import StorageApp, build

__all__ = ["StorageApp", "StorageServiceConfig", "build"]
