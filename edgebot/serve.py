"""`edgebot agent|ingest|pipeline|storage|anomaly --config FILE`: run one process of the mesh.

The same as `python -m edge_agent --config FILE` (and the other modules): the configuration is
validated first (exit 2 naming the bad key), SIGHUP re-reads it, SIGTERM drains and stops.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from edgebot.config_check import CONFIG_CLASSES
from mesh.app import run_service

DESCRIPTIONS = {
    "agent": "run an edge agent: its inputs, the durable spool and the shipper to ingest",
    "ingest": "run IngestService, the edge-facing stream endpoint",
    "pipeline": "run PipelineService: redaction, enrichment and the other processors",
    "storage": "run StorageService: the primary and secondary sinks and the read path",
    "anomaly": "run AnomalyService: agents, models, alerts, exports and the console",
}


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for service, description in DESCRIPTIONS.items():
        parser = subparsers.add_parser(service, help=description, description=description + ".")
        parser.add_argument(
            "--config", type=Path, help="YAML configuration (every key has an embedded default)"
        )
        parser.set_defaults(handler=run, service=service)


async def run(args: argparse.Namespace) -> int:
    package_name, config_class = CONFIG_CLASSES[args.service]
    package = importlib.import_module(package_name)
    return await run_service(
        args.service, getattr(package, config_class), package.build, args.config
    )
