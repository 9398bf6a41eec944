"""Usage per key per day, the per-key requests and tokens per minute, and the prompt limit on
every generation endpoint."""

import time
from typing import Any

import httpx
import pytest

from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln

ONE_DATABASE = True  # usage and limits live in Redis

MODEL = "llama3.2:1b"
MAX_PROMPT_CHARS = 200
RPM = 3
TPM = 40


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    return {
        "KILN_LLM_PROVIDER": "ollama",
        "KILN_OLLAMA_URL": ollama_server.url,
        "KILN_MAX_PROMPT_CHARS": str(MAX_PROMPT_CHARS),
        "KILN_RATE_LIMIT_RPM": str(RPM),
        "KILN_RATE_LIMIT_TPM": str(TPM),
    }


@pytest.fixture
def client(kiln: Kiln, fake_ollama: FakeOllama) -> httpx.Client:
    """A client with a key of its own, so each test has fresh limits."""
    return kiln.client(kiln.new_key())


def room_in_this_minute(seconds: float = 10) -> None:
    """Wait for the next minute if this one ends within `seconds`: the limits count in
    one-minute windows, and a test's requests must fall in one."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.1)


def today(client: httpx.Client, **params: str) -> dict[str, Any]:
    response = client.get("/v1/usage", params={"days": "1", **params})
    assert response.status_code == 200, response.text
    [day] = response.json()["days"]
    return dict(day)


def test_usage_counts_each_generations_tokens(kiln: Kiln, client: httpx.Client) -> None:
    generated = client.post("/v1/generate", json={"prompt": "one two three"})
    chatted = client.post("/v1/chat", json={"messages": [{"role": "user", "content": "hi"}]})
    assert (generated.status_code, chatted.status_code) == (200, 200), chatted.text
    results = [generated.json()["result"], chatted.json()["result"]]

    usage = client.get("/v1/usage").json()

    prompt = sum(result["prompt_eval_count"] for result in results)
    completion = sum(result["eval_count"] for result in results)
    assert len(usage["days"]) == 7
    assert usage["days"][0] == {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "requests": 2,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    assert prompt >= 4
    assert completion >= 4
    assert usage["limits"] == {"requests_per_minute": RPM, "tokens_per_minute": TPM}
    assert today(kiln.client(kiln.new_key()))["total_tokens"] == 0


def test_only_the_admin_reads_another_keys_usage(kiln: Kiln, client: httpx.Client) -> None:
    assert client.post("/v1/generate", json={"prompt": "counted"}).status_code == 200
    key_id = client.get("/v1/usage").json()["key_id"]
    other = kiln.client(kiln.new_key())

    refused = other.get("/v1/usage", params={"key_id": key_id})

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert today(kiln.admin, key_id=key_id)["requests"] == 1


def test_requests_over_the_per_minute_limit_get_429(client: httpx.Client) -> None:
    room_in_this_minute()
    # An unknown model fails its jobs: they use requests but no tokens.
    body = {"kind": "generate", "input": {"prompt": "hi", "model": "no-such-model"}}
    accepted = [client.post("/v1/jobs", json=body).status_code for _ in range(RPM)]

    refused = client.post("/v1/jobs", json=body)

    assert accepted == [202] * RPM
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert f"{RPM} requests per minute" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert error["details"]["retry_after_s"] == int(refused.headers["Retry-After"])
    assert len(client.get("/v1/jobs").json()["data"]) == RPM


def test_a_key_that_used_its_tokens_gets_429_on_every_route(client: httpx.Client) -> None:
    room_in_this_minute()
    words = " ".join(["word"] * 25)  # 26 prompt and 26 completion tokens: over TPM in one go
    assert client.post("/v1/generate", json={"prompt": words}).status_code == 200

    native = client.post("/v1/generate", json={"prompt": "more"})
    openai = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "more"}]},
    )
    ollama = client.post("/api/generate", json={"model": MODEL, "prompt": "more"})

    for refused in (native, openai, ollama):
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert native.json()["error"]["code"] == "rate_limited"
    assert f"{TPM} tokens per minute" in native.json()["error"]["message"]
    assert openai.json()["error"]["code"] == "rate_limited"
    assert "tokens per minute" in ollama.json()["error"]  # Ollama's own error shape


LONG = "x" * (MAX_PROMPT_CHARS + 1)
HALF = "y" * (MAX_PROMPT_CHARS // 2)
CALLS = [
    ("/v1/generate", {"prompt": LONG}),
    (
        "/v1/chat",
        {
            "messages": [
                {"role": "system", "content": HALF + "y"},
                {"role": "user", "content": HALF},
            ]
        },
    ),
    ("/v1/jobs", {"kind": "generate", "input": {"prompt": LONG}}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": LONG}]}),
    ("/api/generate", {"model": MODEL, "prompt": LONG, "stream": False}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": LONG}]}),
    ("/api/v1/generate", {"prompt": LONG, "stream": True}),
    ("/api/llm/generate", {"prompt": LONG}),
    ("/api/llm/stream", {"prompt": LONG}),
    ("/completion", {"prompt": LONG}),
]


@pytest.mark.parametrize(("path", "body"), CALLS, ids=[path for path, _ in CALLS])
def test_a_prompt_over_the_limit_is_refused_everywhere(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    response = client.post(path, json=body)

    assert response.status_code == 422, response.text
    assert f"at most {MAX_PROMPT_CHARS}" in response.text
    assert client.get("/v1/jobs").json()["data"] == []


def test_a_conversation_exactly_at_the_limit_is_accepted(client: httpx.Client) -> None:
    messages = [{"role": "system", "content": HALF}, {"role": "user", "content": HALF}]

    response = client.post("/v1/chat", json={"messages": messages})

    assert response.status_code == 200, response.text
