import sys

from anomaly_svc.config import AnomalyServiceConfig
from anomaly_svc.server import build
from mesh import service_main

sys.exit(service_main("anomaly", AnomalyServiceConfig, build))
