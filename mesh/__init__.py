"""The runtime every EdgeBot service shares: config, TLS, server bootstrap, channels, logs."""

from mesh.app import App, running, service_main
from mesh.channel import open_channel
from mesh.config import ConfigError, ServiceConfig, load_config
from mesh.identity import AccessPolicy, Kind, Principal, current_principal, kinds
from mesh.server import ServiceRuntime, prepare_process

__all__ = [
    "AccessPolicy",
    "App",
    "ConfigError",
    "Kind",
    "Principal",
    "ServiceConfig",
    "ServiceRuntime",
    "current_principal",
    "kinds",
    "load_config",
    "open_channel",
    "prepare_process",
    "running",
    "service_main",
]
