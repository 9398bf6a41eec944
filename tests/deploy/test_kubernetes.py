"""The kustomize base and overlays render with `kubectl kustomize`, every object is valid for a
pinned Kubernetes version, and each overlay keeps its promises (GPUs, replicas, KEDA)."""

import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from typer.testing import CliRunner

from shared.cli.main import app as kiln_cli
from shared.config import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"  # the oldest release still maintained when this was written
GPU = "nvidia.com/gpu"
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed"
)


@cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` makes of base or an overlay."""
    assert KUBECTL is not None
    output = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / target)], capture_output=True, text=True, check=True
    ).stdout
    return tuple(document for document in yaml.safe_load_all(output) if document)


def named(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {each["metadata"]["name"]: each for each in objects if each["kind"] == kind}


def containers(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(deployment name, container) for every container and init container."""
    for name, deployment in named(objects, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield name, container


def gpus(objects: tuple[dict[str, Any], ...]) -> dict[str, object]:
    return {
        name: container["resources"]["limits"][GPU]
        for name, container in containers(objects)
        if GPU in container.get("resources", {}).get("limits", {})
    }


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/prod"])
def test_every_object_is_valid_kubernetes(target: str) -> None:
    for each in render(target):
        if each["apiVersion"].startswith("keda.sh/"):
            continue  # a KEDA custom resource: test_prod_scales_gpu_workers_with_keda checks it
        kubernetes_validate.validate(each, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/prod"])
def test_every_container_has_requests_and_limits(target: str) -> None:
    for name, container in containers(render(target)):
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), (name, container["name"], bound)


def test_base_runs_every_part_with_probes() -> None:
    objects = render("base")
    deployments = named(objects, "Deployment")
    api = deployments["kiln-api"]["spec"]["template"]["spec"]["containers"][0]
    pdb = named(objects, "PodDisruptionBudget")["kiln-api"]["spec"]

    assert set(deployments) == {
        "kiln-api",
        "kiln-worker-io",
        "kiln-worker-gpu",
        "kiln-reconciler",
        "kiln-flower",
    }
    assert set(named(objects, "Service")) == {"kiln-api", "kiln-flower"}
    assert {"kiln-config"} == set(named(objects, "ConfigMap"))
    assert {"kiln-secrets"} == set(named(objects, "Secret"))
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pdb["selector"] == deployments["kiln-api"]["spec"]["selector"]
    assert gpus(objects) == {"kiln-worker-gpu": 1}


def test_dev_has_no_gpus_and_one_replica_each() -> None:
    objects = render("overlays/dev")

    assert gpus(objects) == {}
    assert {each["spec"]["replicas"] for each in named(objects, "Deployment").values()} == {1}
    assert named(objects, "ConfigMap")["kiln-config"]["data"]["KILN_ENV"] == "development"


def test_prod_scales_gpu_workers_with_keda() -> None:
    objects = render("overlays/prod")
    scaled = named(objects, "ScaledObject")["kiln-worker-gpu"]
    target = scaled["spec"]["scaleTargetRef"]
    (trigger,) = scaled["spec"]["triggers"]

    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] in named(objects, "Deployment")
    assert gpus(objects) == {target["name"]: 1}
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "gpu"
    assert int(trigger["metadata"]["listLength"]) >= 1
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


@pytest.mark.parametrize(
    ("target", "namespace"), [("overlays/dev", "kiln-dev"), ("overlays/prod", "kiln")]
)
def test_every_object_lands_in_the_overlays_namespace(target: str, namespace: str) -> None:
    assert {each["metadata"].get("namespace") for each in render(target)} == {namespace}


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_config_names_only_real_settings(target: str) -> None:
    objects = render(target)
    keys = {
        key
        for kind in ("ConfigMap", "Secret")
        for each in named(objects, kind).values()
        for key in each.get("data", {}) | each.get("stringData", {})
        if key.startswith("KILN_")
    }

    assert keys - {f"KILN_{field.upper()}" for field in Settings.model_fields} == set()


def test_kiln_commands_exist() -> None:
    commands = [
        container["command"][1:]
        for _, container in containers(render("overlays/prod"))
        if container.get("command", [""])[0] == "kiln"
    ]

    assert commands
    for command in commands:
        result = CliRunner().invoke(kiln_cli, [*command, "--help"])
        assert result.exit_code == 0, f"kiln {' '.join(command)}: {result.output}"
