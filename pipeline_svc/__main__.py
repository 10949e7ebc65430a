import sys

from mesh import service_main
from pipeline_svc.config import PipelineServiceConfig
from pipeline_svc.server import build

sys.exit(service_main("pipeline", PipelineServiceConfig, build))
