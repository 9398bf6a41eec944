"""OpenAIProvider against the fake OpenAI-compatible server, over real HTTP on loopback."""

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.exceptions import JobCanceled, LLMFailed, LLMUnavailable, ModelNotFound
from shared.llm.base import (
    ChatMessage,
    ChatRequest,
    GenerateRequest,
    GenerateResult,
    LLMProvider,
)
from shared.llm.openai import OpenAIProvider
from tests.fakes.openai_server import FakeOpenAI

MODEL = "gpt-test"
KEY = "sk-test-key"
REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA = {
    "type": "object",
    "properties": {"echo": {"type": "string"}},
    "required": ["echo"],
}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=[MODEL], api_key=KEY) as fake:
        yield fake


@pytest.fixture
def provider(fake: FakeOpenAI) -> Iterator[OpenAIProvider]:
    provider = OpenAIProvider(fake.url, KEY, read_timeout=5.0)
    yield provider
    provider.close()


def generate(
    provider: LLMProvider, prompt: str, model: str = MODEL, **fields: Any
) -> tuple[list[str], GenerateResult | Exception]:
    """Run one generation; return the tokens received and the result or the error raised."""
    tokens: list[str] = []
    request = GenerateRequest(prompt=prompt, model=model, **fields)
    try:
        return tokens, provider.generate(request, on_token=tokens.append, should_stop=lambda: False)
    except Exception as exc:
        return tokens, exc


def chat(
    provider: LLMProvider, messages: list[ChatMessage], model: str = MODEL
) -> tuple[list[str], GenerateResult | Exception]:
    tokens: list[str] = []
    request = ChatRequest(messages=messages, model=model)
    try:
        return tokens, provider.chat(request, on_token=tokens.append, should_stop=lambda: False)
    except Exception as exc:
        return tokens, exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tokens_stream_in_order_with_the_usage_openai_reports(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    tokens, result = generate(provider, "why is the sky blue")

    assert tokens == ["Echo:", " why", " is", " the", " sky", " blue"]
    assert isinstance(result, GenerateResult)
    assert result.response == "Echo: why is the sky blue"
    assert (result.model, result.provider, result.done_reason) == (MODEL, "openai", "stop")
    # The fake's usage is deterministic: ask it for the same completion without streaming.
    whole = httpx.post(
        f"{fake.url}/chat/completions",
        json={"model": MODEL, "messages": fake.requests[0]["messages"]},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": result.response,
        "refusal": None,
    }
    assert result.prompt_eval_count == whole["usage"]["prompt_tokens"]
    assert result.eval_count == whole["usage"]["completion_tokens"] == len(tokens)
    assert fake.requests[0] == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "why is the sky blue"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_durations_are_measured_around_the_first_token(fake: FakeOpenAI) -> None:
    fake.token_delay = 0.05
    provider = OpenAIProvider(fake.url, KEY)

    started = time.monotonic_ns()
    _, result = generate(provider, "a b c")
    elapsed = time.monotonic_ns() - started
    provider.close()

    assert isinstance(result, GenerateResult)
    assert result.load_duration is None
    assert result.total_duration is not None
    assert result.prompt_eval_duration is not None
    assert result.eval_duration is not None
    assert result.total_duration <= elapsed
    assert result.prompt_eval_duration + result.eval_duration == result.total_duration
    assert result.prompt_eval_duration >= 40_000_000  # the first token's 50 ms delay
    assert result.eval_duration >= 120_000_000  # three more tokens, 50 ms apart


def test_generate_sends_the_system_prompt_first(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    _, result = generate(provider, "hello there", system="Be brief.")

    assert isinstance(result, GenerateResult)
    assert result.response == "Echo: hello there"
    assert fake.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]


def test_chat_sends_the_conversation_and_answers_its_last_user_turn(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    conversation = [
        ChatMessage("system", "You echo."),
        ChatMessage("user", "first question"),
        ChatMessage("assistant", "Echo: first question"),
        ChatMessage("user", "second   question"),
    ]

    tokens, result = chat(provider, conversation)

    assert tokens == ["Echo:", " second", " question"]
    assert isinstance(result, GenerateResult)
    assert result.prompt_eval_count == 2 + 2 + 3 + 2 + 4 * 3  # words plus 3 per message
    assert fake.requests[0]["messages"] == [
        {"role": m.role, "content": m.content} for m in conversation
    ]


def test_options_map_onto_chat_completion_fields(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    options = {
        "temperature": 0,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n\n"],
        "num_predict": 2,
        "num_ctx": 4096,  # Ollama-only: OpenAI would answer 400 to it
    }

    tokens, result = generate(provider, "one two three four", options=options)

    assert tokens == ["Echo:", " one"]
    assert isinstance(result, GenerateResult)
    assert (result.done_reason, result.eval_count) == ("length", 2)
    sent = fake.requests[0]
    assert {key: sent[key] for key in sent if key not in ("messages", "stream_options")} == {
        "model": MODEL,
        "stream": True,
        "temperature": 0,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n\n"],
        "max_tokens": 2,
    }


def test_max_tokens_wins_over_num_predict(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    tokens, _ = generate(provider, "one two three", options={"num_predict": 1, "max_tokens": 3})

    assert fake.requests[0]["max_tokens"] == 3
    assert tokens == ["Echo:", " one", " two"]


def test_a_schema_format_asks_for_json_schema_output(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    _, result = generate(provider, "sky blue", format=SCHEMA)

    assert isinstance(result, GenerateResult)
    assert json.loads(result.response) == {"echo": "sky blue"}
    assert fake.requests[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA},
    }


def test_the_json_format_asks_for_a_json_object(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    _, result = generate(provider, "sky blue", format="json")

    assert isinstance(result, GenerateResult)
    assert json.loads(result.response) == {"echo": "sky blue"}
    assert fake.requests[0]["response_format"] == {"type": "json_object"}


def test_an_unknown_format_fails_before_any_request(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    _, error = generate(provider, "hi", format="yaml")

    assert isinstance(error, LLMFailed)
    assert "yaml" in error.message
    assert fake.requests == []


def test_scripted_replies_are_used_one_per_request(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.replies = ["Paris is the capital."]

    first_tokens, first = generate(provider, "capital of France?")
    _, second = generate(provider, "capital of France?")

    assert first_tokens == ["Paris", " is", " the", " capital."]
    assert isinstance(first, GenerateResult)
    assert isinstance(second, GenerateResult)
    assert (first.response, second.response) == (
        "Paris is the capital.",
        "Echo: capital of France?",
    )


def test_unknown_model_raises_model_not_found(provider: OpenAIProvider) -> None:
    tokens, error = generate(provider, "hi", model="gpt-9")

    assert isinstance(error, ModelNotFound)
    assert error.message == "The model `gpt-9` does not exist or you do not have access to it."
    assert error.code == "model_not_found"
    assert tokens == []


@pytest.mark.parametrize("key", ["sk-wrong-key-123456", None], ids=["wrong", "missing"])
def test_a_rejected_key_raises_llm_failed_without_the_key(
    fake: FakeOpenAI, key: str | None
) -> None:
    provider = OpenAIProvider(fake.url, key)

    _, error = generate(provider, "hi")
    with pytest.raises(LLMFailed) as listing:
        provider.list_models()
    provider.close()

    assert isinstance(error, LLMFailed)
    assert error.message == "the OpenAI-compatible server rejected the API key"
    assert error.code == "llm_error"
    assert listing.value.message == error.message
    if key is not None:
        for shown in (str(error), repr(error.details), str(listing.value)):
            assert key not in shown
            assert key[-4:] not in shown  # the fake, like OpenAI, quotes the key's last four


def test_a_server_without_a_key_takes_requests_without_one(fake: FakeOpenAI) -> None:
    fake.api_key = None
    provider = OpenAIProvider(fake.url, None)

    _, result = generate(provider, "hi")
    provider.close()

    assert isinstance(result, GenerateResult)
    assert result.response == "Echo: hi"


def test_a_rejected_body_raises_llm_failed_with_the_servers_message(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    _, error = chat(provider, [])

    assert isinstance(error, LLMFailed)
    assert error.message.startswith("Invalid 'messages': empty array.")
    assert fake.requests[0]["messages"] == []


def test_a_wrong_base_url_is_not_reported_as_an_unknown_model(fake: FakeOpenAI) -> None:
    provider = OpenAIProvider(fake.url.removesuffix("/v1"), KEY)

    _, error = generate(provider, "hi")
    provider.close()

    assert type(error) is LLMFailed
    assert error.message == "Invalid URL (POST /chat/completions)"


def test_nothing_listening_raises_llm_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    provider = OpenAIProvider(url, KEY, connect_timeout=1.0)

    _, error = generate(provider, "hi")
    with pytest.raises(LLMUnavailable, match="could not be reached"):
        provider.list_models()
    provider.close()

    assert isinstance(error, LLMUnavailable)
    assert error.message == f"the OpenAI-compatible server at {url} could not be reached"
    assert error.code == "llm_unavailable"
    assert KEY not in error.message


def test_rate_limit_raises_llm_unavailable_with_retry_after(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.rate_limit_next = 1
    fake.retry_after = 7

    _, limited = generate(provider, "hi")
    _, again = generate(provider, "hi")

    assert isinstance(limited, LLMUnavailable)
    assert limited.message.startswith("Rate limit reached for gpt-test")
    assert limited.message.endswith("(retry after 7 s)")
    assert limited.details == {"retry_after": 7.0}
    assert isinstance(again, GenerateResult)
    assert len(fake.requests) == 2


def test_error_event_mid_stream_raises_llm_failed(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.error_after = 2
    fake.error_message = "The model produced invalid content."

    tokens, error = generate(provider, "a b c d")

    assert tokens == ["Echo:", " a"]
    assert isinstance(error, LLMFailed)
    assert error.message == "The model produced invalid content."


def test_disconnect_mid_stream_raises_llm_unavailable(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.disconnect_after = 2

    tokens, error = generate(provider, "a b c d")

    assert tokens == ["Echo:", " a"]
    assert isinstance(error, LLMUnavailable)
    assert "stream ended before completion" in error.message


def test_a_stream_without_done_raises_llm_unavailable(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.send_done = False

    tokens, error = generate(provider, "a b")

    assert tokens == ["Echo:", " a", " b"]
    assert isinstance(error, LLMUnavailable)
    assert error.message == (
        f"the OpenAI-compatible server at {fake.url}: stream ended before completion"
    )


def test_read_timeout_raises_llm_unavailable(fake: FakeOpenAI) -> None:
    fake.token_delay = 2.0
    provider = OpenAIProvider(fake.url, KEY, read_timeout=0.2)

    started = time.monotonic()
    tokens, error = generate(provider, "a b")
    provider.close()

    assert isinstance(error, LLMUnavailable)
    assert "timed out" in error.message
    assert tokens == []
    assert time.monotonic() - started < 1.5


def test_should_stop_cancels_after_the_first_token(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.token_delay = 0.2
    tokens: list[str] = []
    request = GenerateRequest(prompt="a b c d e f g h i j", model=MODEL)

    started = time.monotonic()
    with pytest.raises(JobCanceled):
        provider.generate(request, on_token=tokens.append, should_stop=lambda: bool(tokens))

    assert tokens == ["Echo:"]
    assert time.monotonic() - started < 1.0  # well before all 11 tokens' 2.2 s


def test_list_models_reads_the_model_list(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    assert [model["id"] for model in provider.list_models()] == [MODEL]

    fake.models = [MODEL, "gpt-other"]
    models = provider.list_models()

    assert [model["id"] for model in models] == [MODEL, "gpt-other"]
    assert models[1] == {
        "id": "gpt-other",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "kiln-fake",
    }


def test_server_coming_back_is_reachable_again(fake: FakeOpenAI) -> None:
    provider = OpenAIProvider(fake.url, KEY)
    fake.stop()
    _, down = generate(provider, "hi")

    fake.start()
    _, up = generate(provider, "hi")
    provider.close()

    assert isinstance(down, LLMUnavailable)
    assert isinstance(up, GenerateResult)
    assert up.response == "Echo: hi"


def answering(status: int, body: Any, **headers: str) -> httpx.Client:
    """A client that gets one canned answer, for shapes other servers send and the fake doesn't."""

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_type", "message"),
    [
        pytest.param(
            404,
            # vLLM's older releases: the error fields at the top level, `code` a number
            {
                "object": "error",
                "message": "The model `gpt-test` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            },
            {},
            ModelNotFound,
            "The model `gpt-test` does not exist.",
            id="vllm-unknown-model",
        ),
        pytest.param(
            503,
            {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}},
            {},
            LLMUnavailable,
            "Loading model",
            id="llama-cpp-loading",
        ),
        pytest.param(
            502,
            "<html>Bad Gateway</html>",
            {},
            LLMUnavailable,
            "the OpenAI-compatible server at http://vllm.test/v1 answered 502: "
            "<html>Bad Gateway</html>",
            id="proxy-page",
        ),
        pytest.param(
            429,
            {
                "error": {
                    "message": "You exceeded your current quota.",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            },
            {},
            LLMFailed,
            "You exceeded your current quota.",
            id="quota-exhausted",
        ),
        pytest.param(
            500,
            {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}},
            {},
            LLMFailed,
            "boom",
            id="server-error",
        ),
        pytest.param(
            200,
            "<html>a web page</html>",
            {"content-type": "text/html"},
            LLMFailed,
            "the OpenAI-compatible server at http://vllm.test/v1 answered text/html, not a stream",
            id="not-a-stream",
        ),
    ],
)
def test_answers_from_other_servers_map_onto_kiln_errors(
    status: int,
    body: Any,
    headers: dict[str, str],
    error_type: type[Exception],
    message: str,
) -> None:
    with answering(status, body, **headers) as client:
        _, error = generate(OpenAIProvider("http://vllm.test/v1", KEY, client=client), "hi")

    assert type(error) is error_type
    assert str(error) == message


def test_an_injected_client_is_left_open() -> None:
    with answering(200, {"object": "list", "data": [{"id": "m"}]}) as client:
        provider = OpenAIProvider("http://vllm.test/v1", KEY, client=client)
        models = provider.list_models()
        provider.close()

        assert models == [{"id": "m"}]
        assert not client.is_closed


def test_fake_runs_as_a_process_that_can_be_killed() -> None:
    port = free_port()
    command = [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(port)]
    provider = OpenAIProvider(f"http://127.0.0.1:{port}/v1", KEY, connect_timeout=1.0)
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            _, result = generate(provider, "hi")
        finally:
            process.kill()  # a crash, not a clean shutdown
    _, error = generate(provider, "hi")
    provider.close()

    assert banner.strip() == f"FakeOpenAI listening on http://127.0.0.1:{port}/v1"
    assert isinstance(result, GenerateResult)
    assert result.response == "Echo: hi"
    assert isinstance(error, LLMUnavailable)
