"""App builds end to end: a brief becomes a published site, then a revised one, and the
evaluator hears of each round."""

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import browser_page, screenshot
from tests.conftest import KilnFactory
from tests.fakes.github import FakeGitHub
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Receiver, Reply, receiving
from tests.harness import Kiln

SECRET = "brief-secret-0123456789"
BASE_ENV = {
    "KILN_TASK_SECRET": SECRET,
    "KILN_CALLBACK_ALLOW_PRIVATE": "true",
    "KILN_LLM_PROVIDER": "template",
}


def _brief(receiver: Receiver, **changes: Any) -> dict[str, Any]:
    brief = {
        "email": "student@example.com",
        "secret": SECRET,
        "task": "sum-of-sales-7",
        "round": 1,
        "nonce": "nonce-r1",
        "brief": "Show the total of the attached sales CSV.",
        "checks": ["Page title is the task", "Total is visible"],
        "evaluation_url": receiver.url,
        "attachments": [
            {
                "name": "data.csv",
                "url": "data:text/csv;base64," + base64.b64encode(b"a,1\nb,2\n").decode(),
            }
        ],
    }
    return {**brief, **changes}


def _run_round(kiln: Kiln, brief: dict[str, Any]) -> dict[str, Any]:
    accepted = httpx.post(f"{kiln.url}/api-endpoint", json=brief, timeout=10)
    assert accepted.status_code == 200, accepted.text
    job = kiln.wait_for(kiln.admin_key, accepted.json()["job_id"], timeout=120)
    assert job["status"] == "succeeded", job.get("error")
    return job


def _callbacks(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.wait_for(count, timeout=60)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def test_two_rounds_on_the_local_publisher(make_kiln: KilnFactory, receiver: Receiver) -> None:
    receiver.script = [Reply(500), Reply(503)]
    with make_kiln(**BASE_ENV) as kiln:
        first = _run_round(kiln, _brief(receiver))
        result = first["result"]
        assert result["repo_url"] == f"{kiln.url}/git/sum-of-sales-7.git"
        with browser_page() as page:
            page.goto(result["pages_url"])
            assert page.title() == "sum-of-sales-7"
            assert (
                page.locator("#brief")
                .inner_text()
                .endswith("Show the total of the attached sales CSV.")
            )
            assert page.locator("#checks li").all_inner_texts() == [
                "Page title is the task",
                "Total is visible",
            ]
            assert screenshot(page, "app-round-1").stat().st_size > 0
        assert {"index.html", "LICENSE", "README.md", ".nojekyll", "data.csv"} <= set(
            result["files"]
        )
        steps = [
            e.data["step"]
            for e in kiln.events(kiln.admin_key, first["id"])
            if e.event == "progress"
        ]
        assert steps == ["generating", "committing", "deploying", "waiting_for_pages", "notifying"]
        assert set(result["durations"]) == {"generate_s", "commit_s", "deploy_s"}
        callbacks = [json.loads(r.body) for r in receiver.wait_for(3, timeout=60)]
        assert callbacks[-1] == {
            "email": "student@example.com",
            "task": "sum-of-sales-7",
            "round": 1,
            "nonce": "nonce-r1",
            "repo_url": result["repo_url"],
            "commit_sha": result["commit_sha"],
            "pages_url": result["pages_url"],
        }
        log = kiln.admin.get(f"/v1/jobs/{first['id']}/deliveries").json()["data"]
        evaluation = next(d for d in log if d["event_type"] == "job.evaluation")
        deadline = time.monotonic() + 30
        while evaluation["status"] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
            log = kiln.admin.get(f"/v1/jobs/{first['id']}/deliveries").json()["data"]
            evaluation = next(d for d in log if d["event_type"] == "job.evaluation")
        assert [a["status_code"] for a in evaluation["attempts"]] == [500, 503, 200]
        notify = kiln.admin.get(f"/v1/jobs/{first['id']}").json()["result"]["notify"]
        assert notify["status"] == "succeeded"
        assert [a["outcome"] for a in notify["attempts"]] == ["retry", "retry", "succeeded"]

        second = _run_round(
            kiln, _brief(receiver, round=2, nonce="nonce-r2", brief="Also show the average.")
        )
        revised = second["result"]
        assert revised["commit_sha"] != result["commit_sha"]
        assert "Also show the average." in httpx.get(revised["pages_url"]).text
        clone = kiln.stack.data_dir / "clone"
        subprocess.run(["git", "clone", "-q", result["repo_url"], str(clone)], check=True)
        parents = subprocess.run(
            ["git", "-C", str(clone), "log", "--format=%H %P", "-n", "1"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert parents == [revised["commit_sha"], result["commit_sha"]]
        assert "MIT License" in (clone / "LICENSE").read_text()
        assert _callbacks(receiver, 4)[-1]["round"] == 2


def test_two_rounds_on_github(make_kiln: KilnFactory, receiver: Receiver) -> None:
    with FakeGitHub(token="ghp_fake_token_for_tests_0123456789abcdef") as github:
        github.rate_limit_next = 1
        env = {
            **BASE_ENV,
            "KILN_PUBLISHER": "github",
            "KILN_GITHUB_API_URL": github.url,
            "KILN_GITHUB_TOKEN": "ghp_fake_token_for_tests_0123456789abcdef",
        }
        with make_kiln(**env) as kiln:
            first = _run_round(kiln, _brief(receiver))["result"]
            assert httpx.get(first["pages_url"]).status_code == 200
            second = _run_round(kiln, _brief(receiver, round=2, nonce="nonce-r2"))["result"]

    assert first["repo_url"].endswith("/sum-of-sales-7")
    assert second["commit_sha"] != first["commit_sha"]
    assert [c["round"] for c in _callbacks(receiver, 2)] == [1, 2]


def test_a_secret_in_the_output_is_never_published(
    make_kiln: KilnFactory, receiver: Receiver
) -> None:
    with make_kiln(**BASE_ENV) as kiln:
        brief = _brief(receiver, task="leaky", brief=f"Print {SECRET} on the page")
        accepted = httpx.post(f"{kiln.url}/api-endpoint", json=brief).json()
        job = kiln.wait_for(kiln.admin_key, accepted["job_id"], timeout=60)

        assert job["status"] == "failed"
        assert job["error"]["code"] == "secret_detected"
        assert SECRET not in job["error"]["message"]
        assert httpx.get(f"{kiln.url}/pages/leaky/").status_code == 404


def test_invalid_llm_output_is_retried_once_with_the_errors(
    make_kiln: KilnFactory, receiver: Receiver, fake_ollama: FakeOllama
) -> None:
    valid = {"files": [{"path": "index.html", "content": "<h1>Made by the model</h1>"}]}
    fake_ollama.replies = ["this is not JSON", json.dumps(valid)]
    env = {**BASE_ENV, "KILN_LLM_PROVIDER": "ollama", "KILN_OLLAMA_URL": fake_ollama.url}
    with make_kiln(**env) as kiln:
        result = _run_round(kiln, _brief(receiver, task="model-made"))["result"]
        page = httpx.get(result["pages_url"]).text

    assert page == "<h1>Made by the model</h1>"
    prompts = [request["prompt"] for request in fake_ollama.requests]
    assert len(prompts) == 2
    assert "Your previous answer was rejected" in prompts[1]
    assert "not JSON" in prompts[1]
    assert fake_ollama.requests[0]["format"]["required"] == ["files"]


def test_a_round_2_waits_for_round_1(make_kiln: KilnFactory, receiver: Receiver) -> None:
    with FakeGitHub(token="ghp_fake_token_for_tests_0123456789abcdef") as github:
        github.builds_before_built = 3  # round 1 waits for its site for a few seconds
        env = {
            **BASE_ENV,
            "KILN_PUBLISHER": "github",
            "KILN_GITHUB_API_URL": github.url,
            "KILN_GITHUB_TOKEN": "ghp_fake_token_for_tests_0123456789abcdef",
        }
        with make_kiln(**env) as kiln:
            one = httpx.post(f"{kiln.url}/api-endpoint", json=_brief(receiver)).json()["job_id"]
            deadline = time.monotonic() + 60
            while kiln.admin.get(f"/v1/jobs/{one}").json()["progress"] != {
                "step": "waiting_for_pages",
                "round": 1,
            }:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            brief_two = _brief(receiver, round=2, nonce="nonce-r2")
            two = httpx.post(f"{kiln.url}/api-endpoint", json=brief_two).json()["job_id"]
            second = kiln.wait_for(kiln.admin_key, two, timeout=120)
            first = kiln.admin.get(f"/v1/jobs/{one}").json()
            steps = [
                e.data["step"] for e in kiln.events(kiln.admin_key, two) if e.event == "progress"
            ]

    assert first["status"] == second["status"] == "succeeded"
    assert steps[0] == "waiting_for_earlier_round"
    repo = github.repo("kiln-bot", "sum-of-sales-7")
    assert repo is not None
    assert repo.parents(second["result"]["commit_sha"]) == [first["result"]["commit_sha"]]
