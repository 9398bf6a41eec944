"""Structured output, fallback providers and the result cache, through a running stack whose
LLM is the fake Ollama, falling back to the fake OpenAI server and then to the template."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Kiln

MODEL = "llama3.2:1b"
SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=[MODEL]) as fake:
        yield fake


@pytest.fixture
def fake_openai(openai_server: FakeOpenAI) -> FakeOpenAI:
    openai_server.reset()
    return openai_server


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama, openai_server: FakeOpenAI) -> dict[str, str]:
    return {
        "KILN_LLM_PROVIDER": "ollama",
        "KILN_OLLAMA_URL": ollama_server.url,
        "KILN_LLM_FALLBACK": "openai, template",
        "KILN_OPENAI_BASE_URL": openai_server.url,
        "KILN_OPENAI_API_KEY": str(openai_server.api_key),
        "KILN_SYNC_TIMEOUT_S": "30",
    }


@pytest.fixture(scope="module")
def client(kiln: Kiln) -> httpx.Client:
    return kiln.client(kiln.new_key())


def streamed(client: httpx.Client, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with connect_sse(client, "POST", path, json={**body, "stream": True}) as source:
        return [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]


# --- structured output -------------------------------------------------------------------------


def test_a_reply_that_misses_the_schema_is_asked_for_again_and_only_the_valid_one_streams(
    client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    fake_ollama.replies = ['{"n": "three"}', '{"n": 3}']

    events = streamed(client, "/v1/generate", {"prompt": "count", "format": SCHEMA})

    tokens = "".join(data["delta"] for kind, data in events if kind == "token")
    assert tokens == '{"n": 3}'
    assert events[-1][0] == "done"
    assert events[-1][1]["response"] == '{"n": 3}'
    first, retry = fake_ollama.requests
    assert first["format"] == SCHEMA
    assert "'three' is not of type 'integer'" in retry["prompt"]
    assert '{"n": "three"}' in retry["prompt"]


def test_a_reply_still_invalid_after_the_retry_fails_with_invalid_output(
    client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    fake_ollama.replies = ["not json at all", '{"m": 1}']
    messages = [{"role": "user", "content": "count"}]

    response = client.post("/v1/chat", json={"messages": messages, "format": SCHEMA})

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_output"
    assert "'n' is a required property" in error["message"]
    assert error["details"]["job"]["error"]["code"] == "invalid_output"
    retry = fake_ollama.requests[1]["messages"]
    assert retry[:2] == [*messages, {"role": "assistant", "content": "not json at all"}]
    assert "is not JSON" in retry[2]["content"]


def test_json_format_accepts_any_json(client: httpx.Client, fake_ollama: FakeOllama) -> None:
    response = client.post("/v1/generate", json={"prompt": "anything", "format": "json"})

    assert response.status_code == 200, response.text
    assert json.loads(response.json()["result"]["response"]) == {"echo": "anything"}
    assert len(fake_ollama.requests) == 1


def test_an_invalid_schema_is_refused_at_submit(
    client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    body = {"kind": "generate", "input": {"prompt": "x", "format": {"type": "integr"}}}

    response = client.post("/v1/jobs", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"][0]["field"] == "input.format"
    assert "not a valid JSON schema" in error["message"]
    assert fake_ollama.requests == []


# --- result cache ------------------------------------------------------------------------------


def test_a_repeated_greedy_request_is_served_from_the_cache(
    kiln: Kiln, client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    body = {"prompt": "cache me", "options": GREEDY}

    first = client.post("/v1/generate", json=body).json()["result"]
    second = client.post("/v1/generate", json=body).json()["result"]
    events = streamed(client, "/v1/generate", body)

    assert first["cached"] is False
    assert second == {**first, "cached": True}
    assert events == [("token", {"delta": "Echo: cache me"}), ("done", events[-1][1])]
    assert events[-1][1]["response"] == "Echo: cache me"
    assert len(fake_ollama.requests) == 1
    ttls = [kiln.redis.ttl(key) for key in kiln.redis.keys("kiln:llm-cache:*")]
    assert ttls
    assert all(0 < ttl <= 3600 for ttl in ttls)


def test_the_cache_is_skipped_on_request_or_when_the_reply_is_not_repeatable(
    client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    seeded = {"prompt": "seeded", "options": {"seed": 7}}
    client.post("/v1/generate", json=seeded)

    opted_out = client.post("/v1/generate", json={**seeded, "cache": False}).json()["result"]
    sampled = [client.post("/v1/generate", json={"prompt": "sampled"}) for _ in range(2)]
    other_options = client.post("/v1/generate", json={**seeded, "options": {"seed": 8}})

    assert opted_out["cached"] is False
    assert [r.json()["result"]["cached"] for r in sampled] == [False, False]
    assert other_options.json()["result"]["cached"] is False
    assert len(fake_ollama.requests) == 5


def test_a_cached_chat_reply_skips_the_backend(
    client: httpx.Client, fake_ollama: FakeOllama
) -> None:
    body = {"messages": [{"role": "user", "content": "again"}], "options": GREEDY}

    replies = [client.post("/v1/chat", json=body).json()["result"] for _ in range(2)]

    assert [reply["cached"] for reply in replies] == [False, True]
    assert replies[1]["response"] == "Echo: again"
    assert len(fake_ollama.requests) == 1


# --- fallback ----------------------------------------------------------------------------------


def test_an_unreachable_backend_falls_back_in_order_and_fallbacks_are_not_cached(
    client: httpx.Client,
    ollama_server: FakeOllama,
    fake_ollama: FakeOllama,
    fake_openai: FakeOpenAI,
) -> None:
    body = {"prompt": "who answers", "options": GREEDY}
    ollama_server.stop()
    try:
        by_openai = client.post("/v1/generate", json=body).json()["result"]
        fake_openai.stop()
        try:
            by_template = client.post("/v1/generate", json=body).json()["result"]
        finally:
            fake_openai.start()
    finally:
        ollama_server.start()
    by_ollama = client.post("/v1/generate", json=body).json()["result"]

    assert (by_openai["provider"], by_openai["response"]) == ("openai", "Echo: who answers")
    assert by_openai["cached"] is False
    assert by_template["provider"] == "template"
    assert by_template["response"] == "Kiln template reply: who answers"
    assert (by_ollama["provider"], by_ollama["cached"]) == ("ollama", False)
    assert [request["model"] for request in fake_openai.requests] == [MODEL]
    assert len(fake_ollama.requests) == 1


def test_an_unknown_model_does_not_fall_back(
    client: httpx.Client, fake_ollama: FakeOllama, fake_openai: FakeOpenAI
) -> None:
    response = client.post("/v1/generate", json={"prompt": "x", "model": "no-such-model"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert fake_openai.requests == []
