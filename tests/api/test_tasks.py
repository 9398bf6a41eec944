"""App briefs at `/api-endpoint`: the secret, validation, attachments and deduplication."""

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln

SECRET = "brief-secret-0123456789"


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    return {
        "KILN_TASK_SECRET": SECRET,
        "KILN_CALLBACK_ALLOW_PRIVATE": "true",
        "KILN_LLM_PROVIDER": "template",
        "KILN_ATTACHMENT_MAX_BYTES": "1000",
        "KILN_ATTACHMENTS_MAX_BYTES": "1500",
    }


def _brief(**changes: Any) -> dict[str, Any]:
    brief = {
        "email": "student@example.com",
        "secret": SECRET,
        "task": "markdown-viewer-x1",
        "round": 1,
        "nonce": "n-1",
        "brief": "Render the attached markdown.",
        "checks": ["Page shows the title"],
        "evaluation_url": "http://127.0.0.1:9/notify",
        "attachments": [
            {
                "name": "doc.md",
                "url": "data:text/markdown;base64," + base64.b64encode(b"# Hi").decode(),
            }
        ],
    }
    return {**brief, **changes}


def _jobs(kiln: Kiln) -> list[dict[str, Any]]:
    return list(kiln.admin.get("/v1/jobs", params={"kind": "app", "limit": 100}).json()["data"])


@pytest.mark.parametrize("path", ["/api-endpoint", "/v1/tasks"])
def test_a_brief_is_accepted_at_once(kiln: Kiln, path: str) -> None:
    brief = _brief(nonce=f"accept-{path}")

    response = httpx.post(f"{kiln.url}{path}", json=brief)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert (body["task"], body["round"]) == ("markdown-viewer-x1", 1)
    job = kiln.admin.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["kind"] == "app"
    assert "secret" not in job["input"]
    assert SECRET not in str(job)
    assert job["input"]["attachments"][0]["name"] == "doc.md"


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x"])
def test_a_wrong_or_missing_secret_is_403_and_stores_nothing(
    kiln: Kiln, secret: str | None
) -> None:
    before = len(_jobs(kiln))
    brief = _brief(nonce="never")
    if secret is None:
        del brief["secret"]
    else:
        brief["secret"] = secret

    response = httpx.post(f"{kiln.url}/api-endpoint", json=brief)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert len(_jobs(kiln)) == before


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"round": "one"}, 422, "round"),
        ({"email": "not-an-email"}, 422, "email"),
        ({"evaluation_url": "nope"}, 422, "evaluation_url"),
        (
            {"attachments": [{"name": "../../etc/passwd", "url": "data:,x"}]},
            422,
            "attachments.0.name",
        ),
        ({"attachments": [{"name": "/etc/passwd", "url": "data:,x"}]}, 422, "attachments.0.name"),
        ({"attachments": [{"name": ".env", "url": "data:,x"}]}, 422, "attachments.0.name"),
        ({"attachments": [{"name": "a.txt", "url": "https://x/a.txt"}]}, 422, "attachments.0.url"),
        (
            {"attachments": [{"name": "a.png", "url": "data:image/png;base64,@@@"}]},
            422,
            "attachments.0.url",
        ),
        (
            {"attachments": [{"name": "big.txt", "url": "data:," + "x" * 1001}]},
            413,
            "attachments.0",
        ),
    ],
)
def test_bad_briefs_name_the_field(
    kiln: Kiln, changes: dict[str, Any], status: int, field: str
) -> None:
    before = len(_jobs(kiln))

    response = httpx.post(f"{kiln.url}/api-endpoint", json=_brief(nonce="bad", **changes))

    assert response.status_code == status, response.text
    assert response.json()["error"]["message"].startswith(field)
    assert len(_jobs(kiln)) == before


def test_attachments_together_over_the_limit_are_refused(kiln: Kiln) -> None:
    attachments = [{"name": f"f{n}.txt", "url": "data:," + "y" * 800} for n in range(2)]

    response = httpx.post(f"{kiln.url}/api-endpoint", json=_brief(attachments=attachments))

    assert response.status_code == 413


def test_a_repeated_nonce_under_concurrency_makes_one_job(kiln: Kiln) -> None:
    brief = _brief(nonce="twenty-at-once")

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(
            pool.map(
                lambda _: httpx.post(f"{kiln.url}/api-endpoint", json=brief, timeout=30), range(20)
            )
        )

    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["job_id"] for r in responses}) == 1
