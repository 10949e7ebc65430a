"""Every metric the dashboards and alert rules use is one the services really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mesh", "edge_agent", "ingest_svc", "pipeline_svc", "storage_svc", "anomaly_svc")
# Exported by prometheus_client's default process collector.
PROCESS_METRICS = {"process_cpu_seconds_total", "process_resident_memory_bytes"}
METRIC_NAME = re.compile(r"\b((?:edgebot|mothership|process)_[a-z0-9_]+)")


def defined_metrics() -> set[str]:
    """Names passed to Counter/Gauge/Histogram in the packages, with their exposed suffixes."""
    names: set[str] = set(PROCESS_METRICS)
    pattern = re.compile(r'(Counter|Gauge|Histogram)\(\s*"([a-z0-9_]+)"', re.S)
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for kind, name in pattern.findall(path.read_text()):
                names.add(name)
                if kind == "Histogram":
                    names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
                if kind == "Counter" and not name.endswith("_total"):
                    names.add(f"{name}_total")
    return names


def used_in(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)}


def test_dashboard_metrics_exist() -> None:
    exprs = []
    for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            exprs += [target["expr"] for target in panel["targets"]]
            assert panel["datasource"]["uid"] == "prometheus"
    assert exprs
    assert used_in(exprs) - defined_metrics() == set()


def test_alert_rule_metrics_exist() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert used_in(exprs) - defined_metrics() == set()
