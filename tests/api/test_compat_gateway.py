"""The LLM gateway's `/completion` and `/history` over Kiln, called with plain HTTP as its
clients did, plus the key Kiln requires."""

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln

ONE_DATABASE = True  # an adapter over the native routes; its history lives in Redis


@pytest.fixture
def client(kiln: Kiln, fake_ollama: FakeOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kiln.url, headers={"X-API-Key": kiln.new_key()}, timeout=60) as http:
        yield http


def test_completion_answers_with_the_request_id_and_latency(client: httpx.Client) -> None:
    response = client.post(
        "/completion", json={"prompt": "tell me a joke"}, headers={"X-Request-ID": "req-joke-1"}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["completion"] == "Echo: tell me a joke"
    assert body["request_id"] == response.headers["x-request-id"] == "req-joke-1"
    assert isinstance(body["latency_ms"], int)
    assert body["latency_ms"] >= 0


def test_history_lists_this_keys_completions_newest_first(kiln: Kiln, client: httpx.Client) -> None:
    for number in (1, 2, 3):
        answered = client.post(
            "/completion",
            json={"prompt": f"prompt {number}"},
            headers={"X-Request-ID": f"r{number}"},
        )
        assert answered.status_code == 200, answered.text
    other = kiln.client(kiln.new_key())
    other.post("/completion", json={"prompt": "someone else"})

    history = client.get("/history").json()["history"]
    latest_two = client.get("/history", params={"limit": 2}).json()["history"]

    assert [entry["request_id"] for entry in history] == ["r3", "r2", "r1"]
    assert [entry["completion"] for entry in history] == [
        "Echo: prompt 3",
        "Echo: prompt 2",
        "Echo: prompt 1",
    ]
    assert history[0]["prompt"] == "prompt 3"
    assert all(isinstance(entry["latency_ms"], int) for entry in history)
    job = kiln.admin.get(f"/v1/jobs/{history[0]['job_id']}").json()
    assert job["input"]["prompt"] == "prompt 3"
    assert latest_two == history[:2]
    assert [entry["prompt"] for entry in other.get("/history").json()["history"]] == [
        "someone else"
    ]


def test_a_failed_completion_is_not_in_the_history(
    client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    fake_ollama.error_after = 0

    response = client.post("/completion", json={"prompt": "doomed"})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "llm_error"
    assert client.get("/history").json() == {"history": []}


@pytest.mark.parametrize("body", [{}, {"prompt": "   "}, {"prompt": 5}])
def test_a_missing_or_blank_prompt_is_invalid(
    client: httpx.Client, body: dict[str, object]
) -> None:
    response = client.post("/completion", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


def test_history_needs_a_key(kiln: Kiln) -> None:
    response = httpx.get(f"{kiln.url}/history")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
