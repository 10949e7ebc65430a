"""`edgebot config check FILE`: validate a service configuration and show what it would run."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from edgebot.layout import MODULES
from edgebot.output import print_help
from mesh.config import ConfigError, ServiceConfig, load_config, mask_secrets

CONFIG_CLASSES = {
    "storage": ("storage_svc", "StorageServiceConfig"),
    "pipeline": ("pipeline_svc", "PipelineServiceConfig"),
    "ingest": ("ingest_svc", "IngestServiceConfig"),
    "anomaly": ("anomaly_svc", "AnomalyServiceConfig"),
    "agent": ("edge_agent", "AgentConfig"),
}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("config", help="work with service configuration files")
    commands = parser.add_subparsers(title="config commands", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a configuration file and print the effective settings",
        description="Validates FILE as the configuration of SERVICE (guessed from the file "
        "name when omitted), applies EDGEBOT_* overrides from the environment, builds the "
        "service without starting it, and prints the effective settings (secrets hidden).",
    )
    check.add_argument("file", type=Path)
    check.add_argument("--service", choices=sorted(CONFIG_CLASSES))
    check.set_defaults(handler=run_check)
    parser.set_defaults(handler=lambda args: print_help(parser))


def guess_service(path: Path) -> str | None:
    stem = path.stem.lower()
    for service in CONFIG_CLASSES:
        if service in stem:
            return service
    return None


def hide_secrets(value: Any, key: str = "") -> Any:
    """The effective settings as shown: secrets as ``***`` (the rules config errors use)."""
    return mask_secrets(value, key)


async def run_check(args: argparse.Namespace) -> int:
    service = args.service or guess_service(args.file)
    if service is None:
        print(
            f"edgebot config check: cannot tell which service {args.file} configures; "
            f"pass --service ({', '.join(sorted(CONFIG_CLASSES))})",
            file=sys.stderr,
        )
        return 2
    package, class_name = CONFIG_CLASSES[service]
    module = importlib.import_module(package)
    model: type[BaseModel] = getattr(module, class_name)
    try:
        config = load_config(model, args.file, service)
        module.build(config)
    except ConfigError as exc:
        print(f"edgebot config check: {exc}", file=sys.stderr)
        return 1
    effective = hide_secrets(config.model_dump(mode="json"))
    print(f"# {args.file}: valid configuration for {service} (python -m {MODULES[service]})")
    for notice in config.env_notices if isinstance(config, ServiceConfig) else ():
        print(f"# warning: {notice}")
    print(yaml.safe_dump(effective, sort_keys=False), end="")
    return 0
