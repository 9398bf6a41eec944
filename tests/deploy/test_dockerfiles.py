"""The images' essentials, read from the Dockerfiles (no Docker engine needed): multi-stage uv
builds from the lock file, pinned slim bases, a non-root user, a healthcheck, no secrets."""

import io
import re
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
KILN_IMAGES = ["Dockerfile.api", "Dockerfile.worker"]
PINNED_TAG = re.compile(r":\d+\.\d+\.\d+")  # a full version, never `latest` or a bare major
SECRET_WORDS = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|BASIC_AUTH", re.IGNORECASE)


def parse(name: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((ROOT / name).read_bytes()))


def final_stage(parser: DockerfileParser) -> list[tuple[str, str]]:
    """(instruction, value) of the last stage, the image that ships."""
    instructions = [(each["instruction"], each["value"]) for each in parser.structure]
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def sync_commands(parser: DockerfileParser) -> list[str]:
    return [
        value
        for each in parser.structure
        if each["instruction"] == "RUN"
        for value in [each["value"]]
        if "uv sync" in value
    ]


@pytest.mark.parametrize("name", [*KILN_IMAGES, "deploy/ollama/Dockerfile"])
def test_multi_stage_from_pinned_bases(name: str) -> None:
    parser = parse(name)

    assert parser.is_multistage
    for image in parser.parent_images:
        if image in {"uv", "build", "pull"}:
            continue  # an earlier stage
        assert PINNED_TAG.search(image), image


@pytest.mark.parametrize("name", KILN_IMAGES)
def test_kiln_images_build_with_uv_from_the_lock_file(name: str) -> None:
    parser = parse(name)
    syncs = sync_commands(parser)

    assert parser.baseimage.startswith("python:3.11.")
    assert "-slim" in parser.baseimage
    assert len(syncs) == 2  # dependencies alone first, then the project
    assert all("--frozen" in sync and "--no-dev" in sync for sync in syncs)
    assert any("--no-install-project" in sync for sync in syncs)


@pytest.mark.parametrize("name", KILN_IMAGES)
def test_kiln_images_run_as_a_user_with_a_healthcheck(name: str) -> None:
    stage = final_stage(parse(name))
    users = [value for instruction, value in stage if instruction == "USER"]

    assert users
    assert users[-1] not in {"root", "0"}
    assert [instruction for instruction, _ in stage].count("HEALTHCHECK") == 1


@pytest.mark.parametrize("name", [*KILN_IMAGES, "deploy/ollama/Dockerfile"])
def test_no_secrets_in_layers(name: str) -> None:
    parser = parse(name)

    assert [arg for arg in parser.args if SECRET_WORDS.search(arg)] == []
    for each in parser.structure:
        if each["instruction"] == "ENV":
            assert not SECRET_WORDS.search(each["value"]), each["value"]


def test_the_build_context_holds_only_the_sources() -> None:
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    assert patterns[0] == "*"  # everything is left out unless named
    assert {pattern.lstrip("!").rstrip("/") for pattern in patterns[1:] if pattern[0] == "!"} == {
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "api",
        "shared",
        "workers",
    }


def test_the_api_image_carries_no_worker_only_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    worker_only = {Requirement(each).name for each in project["optional-dependencies"]["worker"]}
    everywhere = {Requirement(each).name for each in project["dependencies"]}

    assert "flower" in worker_only
    assert worker_only & everywhere == set()
    assert all("--extra worker" not in sync for sync in sync_commands(parse("Dockerfile.api")))
    assert all("--extra worker" in sync for sync in sync_commands(parse("Dockerfile.worker")))


def test_the_ollama_image_bakes_a_model_chosen_at_build_time() -> None:
    parser = parse("deploy/ollama/Dockerfile")
    runs = [each["value"] for each in parser.structure if each["instruction"] == "RUN"]
    pulls = [run for run in runs if "ollama pull" in run]

    assert "MODEL" in parser.args
    assert len(pulls) == 1
    assert 'ollama pull "${MODEL}"' in pulls[0]
    assert [i for i, _ in final_stage(parser)].count("HEALTHCHECK") == 1
