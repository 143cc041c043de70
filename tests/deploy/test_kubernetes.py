"""deploy/k8s: validated against the Kubernetes schemas, and played as pods with podman.

The validator is kubernetes-validate (PyPI), which ships the schemas of every
Kubernetes release, so it runs offline; `strict` refuses a field the schema does not
have. `podman kube play` then runs the parts podman plays (ConfigMap, Deployments,
PersistentVolumeClaims): Redis and the API, and /ready answers on the API pod's port.
What podman cannot play is changed in a copy, each change named below: a Service (podman
has none, so Redis is reached by its pod's name through deploy/podman/config.yaml), the
images (the local ones `make image` builds), the models claim (a host directory), and
the declared container ports (podman 4.3 publishes each on the host).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.deploy.podman import MODEL, PROBLEM, podman

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31"


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        with path.open(encoding="utf-8") as f:
            found.extend((path.name, doc) for doc in yaml.safe_load_all(f) if doc)
    return found


def by_kind(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in documents() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return doc


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    docs = documents()
    kinds = {doc["kind"] for _, doc in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {error}")
    # The validator really checks: a misspelled field and a wrong type are refused.
    broken = copy.deepcopy(by_kind("Deployment", "rnnlm-api"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(by_kind("Deployment", "rnnlm-api"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_api_deployment_probes_resources_and_what_scales_it() -> None:
    api = by_kind("Deployment", "rnnlm-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert api["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    service = by_kind("Service", "rnnlm-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    hpa = by_kind("HorizontalPodAutoscaler", "rnnlm-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rnnlm-api" and hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "rnnlm_requests_waiting"
    pdb = by_kind("PodDisruptionBudget", "rnnlm-api")
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] < api["spec"]["replicas"]
    config = by_kind("ConfigMap", "rnnlm-config")
    redis = by_kind("Service", "redis")
    assert (
        config["data"]["RNNLM_REDIS_URL"]
        == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"
    )
    with (ROOT / "deploy" / "podman" / "config.yaml").open(encoding="utf-8") as f:
        podman_config = yaml.safe_load(f)
    assert set(podman_config["data"]) == set(config["data"])


def for_podman(doc: dict[str, Any], models: Path) -> dict[str, Any]:
    """The changes podman needs (module docstring); nothing else is touched."""
    doc = copy.deepcopy(doc)
    if doc["kind"] != "Deployment":
        return doc
    spec = doc["spec"]["template"]["spec"]
    for container in spec["containers"]:
        container["image"] = {"redis:7-alpine": "localhost/rnnlm-redis", "rnnlm-api:latest": "localhost/rnnlm-api"}[
            container["image"]
        ]
        # podman 4.3 publishes every containerPort on the host (6379 may be taken there):
        # the copy declares none, and its probes name the port by number.
        numbers = {port["name"]: port["containerPort"] for port in container.pop("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            for action in container.get(probe, {}).values():
                if isinstance(action, dict) and action.get("port") in numbers:
                    action["port"] = numbers[action["port"]]
    for volume in spec.get("volumes", []):
        if volume.get("persistentVolumeClaim", {}).get("claimName") == "rnnlm-models":
            volume.pop("persistentVolumeClaim")
            volume["hostPath"] = {"path": str(models), "type": "Directory"}
    return doc


@pytest.fixture(scope="module")
def played(images: None, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Redis and the API played as pods on a network of their own; the API pod's address."""
    suffix = str(os.getpid())
    network = f"rnnlm-kube-{suffix}"
    plays = []
    directory = tmp_path_factory.mktemp("kube")
    for name in ("redis.yaml", "api.yaml"):
        with (K8S / name).open(encoding="utf-8") as f:
            docs = [for_podman(doc, models_dir) for doc in yaml.safe_load_all(f) if doc]
        path = directory / name
        path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
        plays.append(path)
    podman("network", "create", network)
    try:
        for path in plays:
            podman(
                "kube",
                "play",
                "--network",
                network,
                "--configmap",
                str(ROOT / "deploy" / "podman" / "config.yaml"),
                str(path),
            )
        address = podman(
            "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "rnnlm-api-pod-0-api"
        ).stdout.strip()
        yield f"http://{address}:8000"
    finally:
        for path in reversed(plays):
            podman("kube", "down", str(path), check=False)
        podman("network", "rm", "-f", network, check=False)
        for claim in ("redis-data", "rnnlm-models"):  # the claims' volumes (podman names them so)
            podman("volume", "rm", "-f", claim, check=False)


@pytest.mark.slow
@pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
@pytest.mark.timeout(1500)  # the first run on a machine builds the images
def test_podman_plays_redis_and_the_api_and_ready_answers(played: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            ready = httpx.get(f"{played}/ready", timeout=5)
            if ready.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API pod never became ready"
        time.sleep(0.5)
    assert ready.json()["checks"] == {"models": True, "accepting": True, "redis": True}  # Redis through the ConfigMap
    created = httpx.post(f"{played}/v1/sessions", json={"prompt": "the "}, timeout=30)
    assert created.status_code == 201 and created.json()["model"] == MODEL
    assert httpx.get(f"{played}/health", timeout=5).json() == {"status": "ok"}
