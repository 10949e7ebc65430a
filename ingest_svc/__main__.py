import sys

from ingest_svc.config import IngestServiceConfig
from ingest_svc.server import build
from mesh import service_main

sys.exit(service_main("ingest", IngestServiceConfig, build))
