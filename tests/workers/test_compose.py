"""`compose` jobs on a real stack: the fake Ollama answers with scripted drafts, and Kiln
validates them against the Compose Specification, retrying once with the errors."""

import json

import yaml

from shared.schemas import ComposeInput
from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln
from workers.flows.compose import check_draft, template_compose

ONE_DATABASE = True  # drafting and checking the file; its job's status changes are every job's

SERVICES = ["web", {"name": "db", "image": "postgres:16", "environment": {"POSTGRES_DB": "app"}}]

VALID = """\
services:
  web:
    image: nginx:1.27
    ports: ["8080:80"]
    depends_on: [db]
  db:
    image: postgres:16
    environment:
      POSTGRES_DB: app
"""

WITHOUT_DB = """\
services:
  web:
    image: nginx
"""

AGAINST_THE_SPEC = """\
services:
  web:
    image: nginx:1.27
    restart_policy: always
  db:
    image: postgres:16
"""


def draft(compose_yaml: str) -> str:
    """The LLM's structured answer carrying a compose file."""
    return json.dumps({"compose_yaml": compose_yaml})


def test_a_valid_draft_is_the_result(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.replies = [draft(VALID)]

    response = kiln.admin.post("/v1/compose", json={"services": SERVICES})

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["kind"] == "compose"
    assert job["input"]["model"] == "llama3.2:1b"  # the active model, fixed at submit
    result = job["result"]
    assert yaml.safe_load(result["compose_yaml"]) == yaml.safe_load(VALID)
    assert result["services"] == ["web", "db"]
    assert result["warnings"] == []
    (request,) = fake_ollama.requests
    assert request["format"]["required"] == ["compose_yaml"]
    assert "postgres:16" in request["prompt"]


def test_a_missing_service_is_fed_back_once(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.replies = [draft(WITHOUT_DB), draft(VALID)]

    response = kiln.admin.post("/v1/compose", json={"services": SERVICES})

    assert response.status_code == 200, response.text
    assert response.json()["result"]["services"] == ["web", "db"]
    first, retry = fake_ollama.requests
    assert "service 'db' is missing" not in first["prompt"]
    assert "service 'db' is missing" in retry["prompt"]
    assert WITHOUT_DB.strip() in retry["prompt"]


def test_a_draft_invalid_twice_fails_the_job(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.replies = [draft(AGAINST_THE_SPEC), "not json at all"]

    response = kiln.admin.post("/v1/compose", json={"services": ["web", "db"]})

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_output"
    assert '"compose_yaml"' in error["message"]
    assert error["details"]["job"]["status"] == "failed"
    assert "restart_policy" in fake_ollama.requests[1]["prompt"]  # the schema error, fed back


def test_warnings_name_added_services_and_unpinned_images(
    kiln: Kiln, fake_ollama: FakeOllama
) -> None:
    fake_ollama.replies = [draft(VALID.replace("nginx:1.27", "nginx"))]

    response = kiln.admin.post("/v1/compose", json={"services": ["web"]})

    assert response.status_code == 200, response.text
    assert response.json()["result"]["warnings"] == [
        "service 'db' was added",
        "service 'web': image 'nginx' is not pinned to a version",
    ]


def test_an_unknown_model_is_not_found(kiln: Kiln) -> None:
    body = {"services": ["web"], "model": "no-such-model:1b"}
    response = kiln.admin.post("/v1/compose", json=body)

    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"


def test_bad_input_is_refused_before_any_job(kiln: Kiln) -> None:
    for services in ([], ["not a valid name!"], [{"image": "nginx"}], ["web", {"name": "web"}]):
        response = kiln.admin.post("/v1/compose", json={"services": services})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_input"


def test_the_template_providers_file_passes_the_same_checks() -> None:
    services = ComposeInput.model_validate({"services": SERVICES}).requested()
    written = yaml.safe_dump(template_compose(services), sort_keys=False)

    text, errors = check_draft(draft(written), ["web", "db"])

    assert errors == []
    assert yaml.safe_load(text)["services"] == {
        "web": {"image": "web:latest"},
        "db": {"image": "postgres:16", "environment": {"POSTGRES_DB": "app"}},
    }
