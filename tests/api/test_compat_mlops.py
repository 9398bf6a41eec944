"""The MLOps backend's `/api/llm/*` over Kiln, called the way its README's Python client does:
httpx with `X-API-Key`, reading the stream's `data: ` lines."""

import json

import httpx
import pytest

from tests.fakes.ollama import EVAL_NS_PER_TOKEN, LOAD_NS, PROMPT_EVAL_NS_PER_TOKEN, FakeOllama
from tests.harness import Kiln, eventually

ONE_DATABASE = True  # an adapter over the native routes, which run on both databases

MODEL = "llama3.2:1b"


@pytest.fixture(scope="module")
def registered(kiln: Kiln) -> None:
    """Wait until the GPU worker has announced the fake's model."""
    eventually(
        lambda: kiln.admin.get("/v1/models").json()["data"], "a GPU worker announces a model"
    )


@pytest.fixture
def headers(kiln: Kiln, fake_ollama: FakeOllama) -> dict[str, str]:
    return {"X-API-Key": kiln.new_key()}


def test_health_checks_need_no_key(kiln: Kiln, registered: None) -> None:
    app = httpx.get(f"{kiln.url}/health")
    llm = httpx.get(f"{kiln.url}/api/llm/health")

    assert (app.status_code, app.json()) == (200, {"status": "healthy"})
    assert (llm.status_code, llm.json()) == (200, {"status": "healthy", "models": 1})


def test_models_lists_what_the_workers_serve(
    kiln: Kiln, headers: dict[str, str], registered: None
) -> None:
    response = httpx.get(f"{kiln.url}/api/llm/models", headers=headers)

    assert response.status_code == 200
    [model] = response.json()["models"]
    assert (model["name"], model["size"], model["digest"]) == (MODEL, 0, "")
    assert model["modified_at"].endswith("Z")


def test_models_needs_the_key(kiln: Kiln) -> None:
    response = httpx.get(f"{kiln.url}/api/llm/models", headers={"X-API-Key": "wrong"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_generate_answers_with_the_backends_stats(kiln: Kiln, headers: dict[str, str]) -> None:
    response = httpx.post(
        f"{kiln.url}/api/llm/generate",
        json={"model": MODEL, "prompt": "Hello there!", "stream": False},
        headers=headers,
        timeout=60,
    )

    assert response.status_code == 200, response.text
    prompt_eval_count, eval_count = 3, 3  # two words and a BOS; "Echo:" and the two words
    assert response.json() == {
        "model": MODEL,
        "response": "Echo: Hello there!",
        "done": True,
        "total_duration": LOAD_NS
        + prompt_eval_count * PROMPT_EVAL_NS_PER_TOKEN
        + eval_count * EVAL_NS_PER_TOKEN,
        "load_duration": LOAD_NS,
        "prompt_eval_count": prompt_eval_count,
        "eval_count": eval_count,
    }


def test_generate_with_an_unknown_model_is_not_found(kiln: Kiln, headers: dict[str, str]) -> None:
    response = httpx.post(
        f"{kiln.url}/api/llm/generate",
        json={"model": "no-such-model", "prompt": "Hello!"},
        headers=headers,
        timeout=60,
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_stream_sends_text_events_then_done(kiln: Kiln, headers: dict[str, str]) -> None:
    texts, events = [], []
    with httpx.stream(
        "POST",
        f"{kiln.url}/api/llm/stream",
        json={"model": MODEL, "prompt": "Hello world!", "stream": True},
        headers=headers,
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
                events.append(data)
                if "text" in data:
                    texts.append(data["text"])

    assert response.headers["content-type"].startswith("text/event-stream")
    assert "".join(texts) == "Echo: Hello world!"
    assert events[-1] == {"done": True}


def test_the_stream_framing_is_exact(kiln: Kiln, headers: dict[str, str]) -> None:
    with httpx.stream(
        "POST",
        f"{kiln.url}/api/llm/stream",
        json={"prompt": "Quantum computing"},
        headers=headers,
        timeout=60,
    ) as response:
        raw = response.read()

    assert raw == (
        b'data: {"text": "Echo:"}\n\n'
        b'data: {"text": " Quantum"}\n\n'
        b'data: {"text": " computing"}\n\n'
        b'data: {"done": true}\n\n'
    )
