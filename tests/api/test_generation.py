"""`/v1/generate` and `/v1/chat`: waited on, streamed, timed out, and abandoned."""

import json
import time

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import KilnFactory
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import Kiln


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    return {
        "KILN_LLM_PROVIDER": "ollama",
        "KILN_OLLAMA_URL": ollama_server.url,
        "KILN_SYNC_TIMEOUT_S": "3",
    }


def test_generate_waits_for_the_result(kiln: Kiln) -> None:
    response = kiln.client(kiln.new_key()).post("/v1/generate", json={"prompt": "hello world"})

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded"
    assert job["result"]["response"] == "Echo: hello world"
    assert job["kind"] == "generate"


def test_chat_waits_for_the_reply(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "how are you"},
    ]

    response = kiln.client(kiln.new_key()).post("/v1/chat", json={"messages": messages})

    assert response.status_code == 200, response.text
    assert response.json()["result"]["response"] == "Echo: how are you"
    assert fake_ollama.requests[-1]["messages"] == messages


def test_an_unknown_model_is_404_not_500(kiln: Kiln) -> None:
    response = kiln.client(kiln.new_key()).post(
        "/v1/generate", json={"prompt": "x", "model": "no-such-model"}
    )

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["details"]["job"]["status"] == "failed"


def test_a_slow_job_answers_202_with_its_urls(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.token_delay = 0.5
    key = kiln.new_key()

    response = kiln.client(key).post(
        "/v1/generate", json={"prompt": "one two three four five six seven"}
    )

    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "running")
    assert response.headers["location"] == job["urls"]["get"]
    assert kiln.wait_for(key, job["id"])["status"] == "succeeded"


def test_streaming_sends_tokens_then_done_with_usage(kiln: Kiln) -> None:
    client = kiln.client(kiln.new_key())
    body = {"prompt": "alpha beta gamma", "stream": True}

    with connect_sse(client, "POST", "/v1/generate", json=body) as source:
        events = [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]

    tokens = [data["delta"] for kind, data in events if kind == "token"]
    assert "".join(tokens) == "Echo: alpha beta gamma"
    kind, done = events[-1]
    assert kind == "done"
    assert done["response"] == "Echo: alpha beta gamma"
    assert done["usage"]["completion_tokens"] == 4
    assert done["usage"]["prompt_tokens"] > 0


def test_streamed_chat_ends_with_done(kiln: Kiln) -> None:
    client = kiln.client(kiln.new_key())
    body = {"messages": [{"role": "user", "content": "hi there"}], "stream": True}

    with connect_sse(client, "POST", "/v1/chat", json=body) as source:
        events = [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]

    assert events[-1][0] == "done"
    assert events[-1][1]["response"] == "Echo: hi there"


def test_a_client_that_hangs_up_cancels_the_generation(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.token_delay = 0.3
    key = kiln.new_key()
    client = kiln.client(key)
    body = {"prompt": " ".join(["slow"] * 60), "stream": True}

    with connect_sse(client, "POST", "/v1/generate", json=body) as source:
        for sse in source.iter_sse():
            if sse.event == "token":
                break  # hang up after the first token

    deadline = time.monotonic() + 15
    while (jobs := client.get("/v1/jobs", params={"limit": 1}).json()["data"])[0][
        "status"
    ] != "canceled":
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)
    fake_ollama.token_delay = 0.0
    follow_up = client.post("/v1/generate", json={"prompt": "next"})
    assert follow_up.status_code == 200
    assert follow_up.json()["result"]["response"] == "Echo: next"


def test_a_chat_job_through_v1_jobs(kiln: Kiln) -> None:
    key = kiln.new_key()
    body = {"kind": "chat", "input": {"messages": [{"role": "user", "content": "yo"}]}}

    job = kiln.client(key).post("/v1/jobs", json=body).json()

    assert kiln.wait_for(key, job["id"])["result"]["response"] == "Echo: yo"
    bad = kiln.client(key).post("/v1/jobs", json={"kind": "chat", "input": {"messages": []}})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "input.messages"
    assert httpx.post(f"{kiln.url}/v1/chat", json={"messages": []}).status_code == 401


def test_the_openai_provider_serves_generate_and_chat(make_kiln: KilnFactory) -> None:
    with FakeOpenAI(api_key="sk-test-key-0123456789") as openai_server:
        env = {
            "KILN_LLM_PROVIDER": "openai",
            "KILN_OPENAI_BASE_URL": openai_server.url,
            "KILN_OPENAI_API_KEY": "sk-test-key-0123456789",
            "KILN_DEFAULT_MODEL": "gpt-test",
        }
        with make_kiln(**env) as kiln:
            client = kiln.client(kiln.new_key())
            generated = client.post("/v1/generate", json={"prompt": "via openai"}).json()
            chat = client.post("/v1/chat", json={"messages": [{"role": "user", "content": "hi"}]})

    assert generated["result"]["provider"] == "openai"
    assert generated["result"]["response"] == "Echo: via openai"
    assert generated["result"]["eval_count"] == 3
    assert chat.json()["result"]["response"] == "Echo: hi"
    assert openai_server.requests[0]["stream"] is True


def test_models_and_workers_come_from_the_worker_registry(kiln: Kiln) -> None:
    client = kiln.client(kiln.new_key())
    deadline = time.monotonic() + 20
    while not (models := client.get("/v1/models").json())["data"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    assert models["object"] == "list"
    assert [model["id"] for model in models["data"]] == ["llama3.2:1b"]
    assert models["data"][0]["workers"][0].startswith("worker-gpu@")
    workers = {w["hostname"].split("@")[0]: w for w in client.get("/v1/workers").json()["data"]}
    assert workers["worker-gpu"]["provider"] == "ollama"
    assert workers["worker-gpu"]["queues"] == ["gpu"]
    assert workers["worker-io"]["models"] == []
