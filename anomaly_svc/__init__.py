"""The anomaly service: agents, models, the anomaly store, alerts and exports."""

from anomaly_svc.config import AnomalyServiceConfig
from anomaly_svc.server import AnomalyApp, build

__all__ = ["AnomalyApp", "AnomalyServiceConfig", "build"]
