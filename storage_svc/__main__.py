import sys

from mesh import service_main
from storage_svc.config import StorageServiceConfig
from storage_svc.server import build

sys.exit(service_main("storage", StorageServiceConfig, build))
