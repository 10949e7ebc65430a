"""The operator web console of the anomaly service, served by the service's own process."""

from anomaly_svc.console.config import ConsoleSection
from anomaly_svc.console.server import Console

__all__ = ["Console", "ConsoleSection"]
