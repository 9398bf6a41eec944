"""The private LLM API server's `/api/v1/generate` over Kiln, called as its README calls it."""

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln

ONE_DATABASE = True  # an adapter over the native routes, which run on both databases


@pytest.fixture
def client(kiln: Kiln, fake_ollama: FakeOllama) -> Iterator[httpx.Client]:
    """A plain HTTP client with a new key (the fake's knobs reset for each test)."""
    with httpx.Client(
        base_url=kiln.url, headers={"Authorization": f"Bearer {kiln.new_key()}"}, timeout=60
    ) as http:
        yield http


def test_generate_answers_the_whole_response(client: httpx.Client) -> None:
    response = client.post("/api/v1/generate", json={"prompt": "Why is the sky blue?"})

    assert response.status_code == 200, response.text
    assert response.json() == {"response": "Echo: Why is the sky blue?"}


def test_generate_uses_the_active_model(client: httpx.Client, fake_ollama: FakeOllama) -> None:
    client.post("/api/v1/generate", json={"prompt": "hi", "stream": False})

    assert fake_ollama.requests[-1]["model"] == "llama3.2:1b"


def test_the_stream_is_response_events_ending_with_an_empty_object(client: httpx.Client) -> None:
    body = {"prompt": "Write a story.", "stream": True}

    with client.stream("POST", "/api/v1/generate", json=body) as response:
        content_type = response.headers["content-type"]
        raw = response.read()

    assert response.status_code == 200
    assert content_type.startswith("text/event-stream")
    assert raw == (
        b'data: {"response": "Echo:"}\n\n'
        b'data: {"response": " Write"}\n\n'
        b'data: {"response": " a"}\n\n'
        b'data: {"response": " story."}\n\n'
        b"data: {}\n\n"
    )


def test_a_failure_mid_stream_is_an_error_event_without_the_end(
    client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    fake_ollama.error_after = 1

    with client.stream(
        "POST", "/api/v1/generate", json={"prompt": "one two", "stream": True}
    ) as response:
        lines = [line for line in response.iter_lines() if line]

    assert lines[0] == 'data: {"response": "Echo:"}'
    assert lines[-1].startswith('data: {"error": {"code": "llm_error"')
    assert "data: {}" not in lines


def test_the_key_may_come_as_x_api_key(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    headers = {"X-API-Key": kiln.new_key()}

    response = httpx.post(
        f"{kiln.url}/api/v1/generate", json={"prompt": "hi"}, headers=headers, timeout=60
    )

    assert response.status_code == 200
    assert response.json() == {"response": "Echo: hi"}


def test_no_key_is_refused_in_the_one_error_shape(kiln: Kiln) -> None:
    response = httpx.post(f"{kiln.url}/api/v1/generate", json={"prompt": "hi"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_a_missing_prompt_is_invalid(client: httpx.Client) -> None:
    response = client.post("/api/v1/generate", json={"stream": True})

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "prompt"
