"""The compose files follow the Compose Specification and wire Kiln as deployed: every service,
healthchecks, GPU pinning, and a CPU-only override that reserves no GPU."""

import copy
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from shared.cli.main import app as kiln_cli
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
# The Compose Specification's JSON schema, as check-jsonschema vendors it.
SCHEMA = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
SERVICES = {
    "redis",
    "postgres",
    "ollama",
    "migrate",
    "api",
    "worker-gpu",
    "worker-io",
    "reconciler",
    "flower",
}


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: `!reset` removes what an earlier file set."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506
    return document


def with_override(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The services of `base` after `override`: a `!reset` key drops the base's value, another
    replaces it (Compose merges mappings deeper, which these files do not need)."""
    merged = copy.deepcopy(base)
    for name, changes in override["services"].items():
        service = merged["services"][name]
        for key, value in changes.items():
            if value is None:
                service.pop(key, None)
            else:
                service[key] = value
    return merged


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [device for device in reservations.get("devices", []) if "gpu" in device["capabilities"]]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.mark.parametrize("path", [COMPOSE, CPU_OVERRIDE], ids=lambda path: path.name)
def test_follows_the_compose_specification(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))

    errors = [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(load(path))]

    assert errors == []


def test_runs_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    checked = {"redis", "postgres", "ollama", "api", "worker-gpu", "worker-io", "flower"}

    for name in checked:
        assert services[name]["healthcheck"]["test"], name
        assert not services[name]["healthcheck"].get("disable"), name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "gpu0@" in " ".join(services["worker-gpu"]["healthcheck"]["test"])


def test_state_lives_in_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert services["redis"]["command"][-4:] == ["--appendonly", "yes", "--appendfsync", "everysec"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "ollama-models:/root/.ollama" in services["ollama"]["volumes"]
    assert {"redis-data", "postgres-data", "ollama-models"} <= set(compose["volumes"])


def test_ollama_and_the_gpu_worker_share_one_pinned_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ollama, worker = gpu_devices(services["ollama"]), gpu_devices(services["worker-gpu"])

    assert [device["driver"] for device in ollama + worker] == ["nvidia", "nvidia"]
    assert ollama[0]["device_ids"] == worker[0]["device_ids"] == ["0"]
    assert services["worker-gpu"]["command"][-2:] == ["--gpus", "0"]
    assert [name for name in services if gpu_devices(services[name])] == ["ollama", "worker-gpu"]


def test_the_cpu_override_reserves_no_gpu(compose: dict[str, Any]) -> None:
    cpu = with_override(compose, load(CPU_OVERRIDE))

    assert {name for name, service in cpu["services"].items() if gpu_devices(service)} == set()
    assert set(cpu["services"]) == SERVICES


def test_queues_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]

    assert services["worker-io"]["command"][:4] == ["kiln", "worker", "--queues", "io,callbacks"]
    assert services["migrate"]["command"] == ["kiln", "migrate"]
    assert services["reconciler"]["command"] == ["kiln", "reconciler"]
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.api"
    for name in ("migrate", "worker-gpu", "worker-io", "reconciler", "flower"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile.worker", name
    for name in ("api", "worker-gpu", "worker-io", "reconciler"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name


def test_flower_takes_basic_auth_from_the_environment(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]

    assert flower["ports"] == ["5555:5555"]
    assert flower["environment"]["KILN_FLOWER_BASIC_AUTH"].startswith("${KILN_FLOWER_BASIC_AUTH:?")
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${KILN_FLOWER_BASIC_AUTH}"
    assert not any("basic_auth" in part for part in flower["command"])


def test_names_only_real_settings(compose: dict[str, Any]) -> None:
    named = {
        key
        for service in compose["services"].values()
        for key in (service.get("environment") or {})
        if key.startswith("KILN_")
    }

    assert named - {f"KILN_{field.upper()}" for field in Settings.model_fields} == set()


def test_kiln_commands_exist(compose: dict[str, Any]) -> None:
    commands = [
        service["command"][1:]
        for service in compose["services"].values()
        if service.get("command", [""])[0] == "kiln"
    ]

    for command in commands:
        result = CliRunner().invoke(kiln_cli, [*command, "--help"])
        assert result.exit_code == 0, f"kiln {' '.join(command)}: {result.output}"
