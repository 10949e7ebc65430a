"""The Kubernetes manifests: well-formed, consistent with each other and with the configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edgebot.config_check import CONFIG_CLASSES
from edgebot.layout import MODULES
from mesh.config import ServiceConfig, load_config

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def service_config(service: str, tmp_path: Path) -> ServiceConfig:
    (config_map,) = of_kind("ConfigMap")
    path = tmp_path / f"{service}.yaml"
    path.write_text(config_map["data"][f"{service}.yaml"])
    package, class_name = CONFIG_CLASSES[service]
    model = getattr(__import__(package), class_name)
    config: ServiceConfig = load_config(model, path, service, environ={})
    return config


def test_every_document_is_well_formed() -> None:
    for doc in documents():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "edgebot", doc["metadata"]


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_deployment_matches_its_config_and_service(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    name = deployment["metadata"]["name"]
    config = service_config(name, tmp_path)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == [MODULES[name], "--config", f"/config/{name}.yaml"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": config.server.port,
        "health": config.server.health_port,
        "metrics": config.server.metrics_port,
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.server.health_port
    assert {"requests", "limits"} <= set(container["resources"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(config.tls.cert_file).startswith("/certs/")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = [s for s in of_kind("Service") if s["metadata"]["name"] == name]
    assert len(headless) == 1
    assert headless[0]["spec"]["clusterIP"] == "None"
    assert headless[0]["spec"]["selector"].items() <= labels.items()
    assert headless[0]["spec"]["ports"][0]["port"] == config.server.port


def test_stateful_deployments_never_share_their_volume() -> None:
    for deployment in of_kind("Deployment"):
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        if any("persistentVolumeClaim" in v for v in volumes):
            assert deployment["spec"]["replicas"] == 1
            assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_autoscalers_and_budgets_point_at_deployments() -> None:
    names = {d["metadata"]["name"] for d in of_kind("Deployment")}
    autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind("HorizontalPodAutoscaler")}
    assert autoscaled == {"ingest", "pipeline"}
    assert autoscaled <= names
    for budget in of_kind("PodDisruptionBudget"):
        target = budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        assert target in names


def test_ingest_rebalances_long_streams_and_balances_calls(tmp_path: Path) -> None:
    config = service_config("ingest", tmp_path)
    assert config.server.max_connection_age_s
    for client in (config.pipeline, config.storage):  # type: ignore[attr-defined]
        (address,) = client.addresses
        assert address.endswith(".svc.cluster.local:" + address.rsplit(":", 1)[1])
        assert client.tls_server_name
