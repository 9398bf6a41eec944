"""OllamaProvider against the fake Ollama server, over real HTTP on loopback."""

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
from shared.llm.base import ChatMessage, ChatRequest, GenerateRequest, GenerateResult
from shared.llm.ollama import OllamaProvider
from tests.fakes.ollama import FakeOllama

MODEL = "llama3.2:1b"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as fake:
        yield fake


@pytest.fixture
def provider(fake: FakeOllama) -> Iterator[OllamaProvider]:
    provider = OllamaProvider(fake.url, read_timeout=5.0)
    yield provider
    provider.close()


def generate(
    provider: OllamaProvider, prompt: str, model: str = MODEL, **fields: Any
) -> tuple[list[str], GenerateResult | Exception]:
    """Run one generation; return the tokens received and the result or the error raised."""
    tokens: list[str] = []
    request = GenerateRequest(prompt=prompt, model=model, **fields)
    try:
        return tokens, provider.generate(request, on_token=tokens.append, should_stop=lambda: False)
    except Exception as exc:
        return tokens, exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tokens_stream_in_order_and_stats_match_ollamas(
    fake: FakeOllama, provider: OllamaProvider
) -> None:
    tokens, result = generate(
        provider, "why is the sky blue", system="Be brief.", options={"temperature": 0}
    )

    assert tokens == ["Echo:", " why", " is", " the", " sky", " blue"]
    assert isinstance(result, GenerateResult)
    assert result.response == "Echo: why is the sky blue"
    assert (result.model, result.provider, result.done_reason) == (MODEL, "ollama", "stop")
    # The fake's stats are deterministic: ask it for the same completion without streaming.
    whole = httpx.post(
        f"{fake.url}/api/generate",
        json={"model": MODEL, "prompt": "why is the sky blue", "stream": False},
    ).json()
    fields = result.to_dict()
    ours = {"provider": "ollama", "cached": False}  # what Kiln adds to Ollama's fields
    assert fields == {key: whole[key] for key in fields if key not in ours} | ours
    assert result.eval_count == len(tokens)
    assert fake.requests[0] == {
        "model": MODEL,
        "prompt": "why is the sky blue",
        "stream": True,
        "system": "Be brief.",
        "options": {"temperature": 0},
    }


def test_empty_optional_fields_are_not_sent(fake: FakeOllama, provider: OllamaProvider) -> None:
    _, result = generate(provider, "hi", system="", options={})

    assert isinstance(result, GenerateResult)
    assert fake.requests == [{"model": MODEL, "prompt": "hi", "stream": True}]


def test_num_predict_cuts_the_completion(provider: OllamaProvider) -> None:
    tokens, result = generate(provider, "one two three four", options={"num_predict": 2})

    assert tokens == ["Echo:", " one"]
    assert isinstance(result, GenerateResult)
    assert (result.done_reason, result.eval_count) == ("length", 2)


def test_unknown_model_raises_model_not_found(provider: OllamaProvider) -> None:
    tokens, error = generate(provider, "hi", model="mistral:7b")

    assert isinstance(error, ModelNotFound)
    assert error.message == 'model "mistral:7b" not found, try pulling it first'
    assert error.code == "model_not_found"
    assert tokens == []


def test_ollama_rejecting_the_request_raises_llm_failed(provider: OllamaProvider) -> None:
    _, error = generate(provider, "hi", model="")

    assert isinstance(error, LLMFailed)
    assert error.message == "model is required"


def test_nothing_listening_raises_llm_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    provider = OllamaProvider(url, connect_timeout=1.0)

    _, error = generate(provider, "hi")
    with pytest.raises(LLMUnavailable, match="could not be reached"):
        provider.list_models()

    assert isinstance(error, LLMUnavailable)
    assert error.message == f"Ollama at {url} could not be reached"
    assert error.code == "llm_unavailable"
    provider.close()


def test_error_line_mid_stream_raises_llm_failed(
    fake: FakeOllama, provider: OllamaProvider
) -> None:
    fake.error_after = 2
    fake.error_message = "llama runner process has terminated: signal: killed"

    tokens, error = generate(provider, "a b c d")

    assert tokens == ["Echo:", " a"]
    assert isinstance(error, LLMFailed)
    assert error.message == "llama runner process has terminated: signal: killed"


def test_disconnect_mid_stream_raises_llm_unavailable(
    fake: FakeOllama, provider: OllamaProvider
) -> None:
    fake.disconnect_after = 2

    tokens, error = generate(provider, "a b c d")

    assert tokens == ["Echo:", " a"]
    assert isinstance(error, LLMUnavailable)
    assert "stream ended before completion" in error.message


def test_read_timeout_raises_llm_unavailable(fake: FakeOllama) -> None:
    fake.token_delay = 2.0
    provider = OllamaProvider(fake.url, read_timeout=0.2)

    started = time.monotonic()
    tokens, error = generate(provider, "a b")

    assert isinstance(error, LLMUnavailable)
    assert "timed out" in error.message
    assert tokens == []
    assert time.monotonic() - started < 1.5
    provider.close()


def test_should_stop_cancels_after_the_first_token(
    fake: FakeOllama, provider: OllamaProvider
) -> None:
    fake.token_delay = 0.2
    tokens: list[str] = []
    request = GenerateRequest(prompt="a b c d e f g h i j", model=MODEL)

    started = time.monotonic()
    with pytest.raises(JobCanceled):
        provider.generate(request, on_token=tokens.append, should_stop=lambda: bool(tokens))

    assert tokens == ["Echo:"]
    assert time.monotonic() - started < 1.0  # well before all 11 tokens' 2.2 s


def test_list_models_reads_the_tags(fake: FakeOllama, provider: OllamaProvider) -> None:
    assert [model["name"] for model in provider.list_models()] == [MODEL]

    fake.models = [MODEL, "qwen2.5:0.5b"]
    models = provider.list_models()

    assert [model["name"] for model in models] == [MODEL, "qwen2.5:0.5b"]
    assert models[1]["details"]["family"] == "qwen"


def test_ollama_coming_back_is_reachable_again(fake: FakeOllama) -> None:
    provider = OllamaProvider(fake.url)
    fake.stop()
    _, down = generate(provider, "hi")

    fake.start()
    _, up = generate(provider, "hi")

    assert isinstance(down, LLMUnavailable)
    assert isinstance(up, GenerateResult)
    assert up.response == "Echo: hi"
    provider.close()


def test_fake_runs_as_a_process_that_can_be_killed() -> None:
    port = free_port()
    command = [sys.executable, "-m", "tests.fakes.ollama", "--port", str(port)]
    provider = OllamaProvider(f"http://127.0.0.1:{port}", connect_timeout=1.0)
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            _, result = generate(provider, "hi")
        finally:
            process.kill()  # a crash, not a clean shutdown
    _, error = generate(provider, "hi")
    provider.close()

    assert banner.strip() == f"FakeOllama listening on http://127.0.0.1:{port}"
    assert isinstance(result, GenerateResult)
    assert result.response == "Echo: hi"
    assert isinstance(error, LLMUnavailable)


def test_chat_streams_the_assistant_reply() -> None:
    with FakeOllama(models=["llama3.2:1b"]) as fake:
        provider = OllamaProvider(fake.url)
        tokens: list[str] = []
        request = ChatRequest(
            messages=[
                ChatMessage("system", "Be brief."),
                ChatMessage("user", "first question"),
                ChatMessage("assistant", "an answer"),
                ChatMessage("user", "second question"),
            ],
            model="llama3.2:1b",
        )

        result = provider.chat(request, on_token=tokens.append, should_stop=lambda: False)

        assert "".join(tokens) == result.response == "Echo: second question"
        assert result.eval_count == 3
        assert fake.requests[-1]["messages"][0] == {"role": "system", "content": "Be brief."}
        provider.close()
