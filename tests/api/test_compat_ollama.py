"""The Ollama API over Kiln's jobs, driven by the official `ollama` client, unchanged."""

import json
import time
from collections.abc import Generator, Iterator

import httpx
import ollama
import pytest

from tests.fakes.ollama import EVAL_NS_PER_TOKEN, LOAD_NS, PROMPT_EVAL_NS_PER_TOKEN, FakeOllama
from tests.harness import Kiln

ONE_DATABASE = True  # the Ollama adapter only translates; the native routes run on both databases

MODEL = "llama3.2:1b"
LATEST = "tinyllama:latest"  # Ollama's clients may name it `tinyllama`
NOT_FOUND = 'model "no-such-model" not found, try pulling it first'


@pytest.fixture(scope="module")
def ollama_server() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL, LATEST]) as fake:
        yield fake


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    return {
        "KILN_LLM_PROVIDER": "ollama",
        "KILN_OLLAMA_URL": ollama_server.url,
        "KILN_SYNC_TIMEOUT_S": "3",
    }


@pytest.fixture(scope="module")
def registered(kiln: Kiln) -> list[str]:
    """The fake's models, once the GPU worker has announced them in the registry."""
    client = kiln.admin
    deadline = time.monotonic() + 20
    while not (models := client.get("/v1/models").json()["data"]):
        assert time.monotonic() < deadline, "no GPU worker announced a model"
        time.sleep(0.2)
    return sorted(model["id"] for model in models)


@pytest.fixture
def key(kiln: Kiln) -> str:
    return kiln.new_key()


@pytest.fixture
def client(kiln: Kiln, key: str, fake_ollama: FakeOllama) -> Iterator[ollama.Client]:
    """Ollama's own client pointed at Kiln (the fake's knobs reset for each test)."""
    with ollama.Client(
        host=kiln.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as ollama_client:
        yield ollama_client


def expected_stats(prompt_words: int, eval_count: int) -> dict[str, int]:
    """The fake's stats, which Kiln must pass through unchanged."""
    prompt_eval_count = prompt_words + 1  # the fake counts a BOS token
    return {
        "prompt_eval_count": prompt_eval_count,
        "eval_count": eval_count,
        "load_duration": LOAD_NS,
        "prompt_eval_duration": prompt_eval_count * PROMPT_EVAL_NS_PER_TOKEN,
        "eval_duration": eval_count * EVAL_NS_PER_TOKEN,
        "total_duration": LOAD_NS
        + prompt_eval_count * PROMPT_EVAL_NS_PER_TOKEN
        + eval_count * EVAL_NS_PER_TOKEN,
    }


def stats_of(response: ollama.GenerateResponse | ollama.ChatResponse) -> dict[str, int | None]:
    return {name: getattr(response, name) for name in expected_stats(0, 0)}


def test_generate_streams_chunks_in_order_then_the_stats(client: ollama.Client) -> None:
    chunks = list(client.generate(model=MODEL, prompt="alpha beta gamma", stream=True))

    assert [chunk.response for chunk in chunks[:-1]] == ["Echo:", " alpha", " beta", " gamma"]
    assert [chunk.done for chunk in chunks] == [False] * 4 + [True]
    assert all(chunk.model == MODEL for chunk in chunks)
    assert all(str(chunk.created_at).endswith("Z") for chunk in chunks)
    final = chunks[-1]
    assert final.response == ""
    assert final.done_reason == "stop"
    assert stats_of(final) == expected_stats(prompt_words=3, eval_count=4)


def test_the_stream_is_ndjson(kiln: Kiln, key: str) -> None:
    body = {"model": MODEL, "prompt": "one two"}  # no `stream`: Ollama streams by default

    with kiln.client(key).stream("POST", "/api/generate", json=body) as response:
        content_type = response.headers["content-type"]
        lines = [json.loads(line) for line in response.iter_lines() if line]

    assert content_type.startswith("application/x-ndjson")
    assert "".join(line["response"] for line in lines) == "Echo: one two"
    assert lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == 3


def test_generate_without_streaming_answers_one_object(
    client: ollama.Client, fake_ollama: FakeOllama
) -> None:
    response = client.generate(
        model=MODEL,
        prompt="hello world",
        system="Be brief.",
        options={"temperature": 0},
        stream=False,
    )

    assert response.response == "Echo: hello world"
    assert response.done is True
    assert response.done_reason == "stop"
    assert stats_of(response) == expected_stats(prompt_words=2, eval_count=3)
    sent = fake_ollama.requests[-1]  # what the GPU worker asked the backend
    assert (sent["prompt"], sent["system"]) == ("hello world", "Be brief.")
    assert sent["options"] == {"temperature": 0}


def test_a_format_reaches_the_backend(client: ollama.Client) -> None:
    response = client.generate(model=MODEL, prompt="give json", format="json", stream=False)

    assert json.loads(response.response or "") == {"echo": "give json"}


def test_chat_streams_the_assistants_message(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "how are you"}]

    chunks = list(client.chat(model=MODEL, messages=messages, stream=True))

    assert [chunk.message.content for chunk in chunks[:-1]] == ["Echo:", " how", " are", " you"]
    assert {chunk.message.role for chunk in chunks} == {"assistant"}
    final = chunks[-1]
    assert (final.done, final.done_reason, final.message.content) == (True, "stop", "")
    assert stats_of(final) == expected_stats(prompt_words=3, eval_count=4)


def test_chat_without_streaming(client: ollama.Client, fake_ollama: FakeOllama) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi there"},
    ]

    response = client.chat(model=MODEL, messages=messages, stream=False)

    assert response.message.role == "assistant"
    assert response.message.content == "Echo: hi there"
    assert response.done is True
    assert response.eval_count == 3
    assert fake_ollama.requests[-1]["messages"] == messages


def test_list_shows_the_models_workers_serve(client: ollama.Client, registered: list[str]) -> None:
    listed = client.list()

    assert sorted(str(model.model) for model in listed.models) == registered == [MODEL, LATEST]
    assert listed.models[0].size == 0
    assert listed.models[0].details is not None
    assert listed.models[0].modified_at is not None


def test_show_describes_a_served_model(
    client: ollama.Client, kiln: Kiln, key: str, registered: list[str]
) -> None:
    shown = client.show(MODEL)

    assert shown.capabilities == ["completion"]
    assert f"FROM {MODEL}" in (shown.modelfile or "")
    assert shown.modelinfo == {}
    legacy = kiln.client(key).post("/api/show", json={"name": MODEL})
    assert legacy.status_code == 200
    assert legacy.json()["details"]["family"] == ""


def test_a_name_without_a_tag_means_latest(
    client: ollama.Client, kiln: Kiln, key: str, registered: list[str]
) -> None:
    shown = client.show("tinyllama")
    untagged = kiln.client(key).post("/api/show", json={"model": "llama3.2"})

    assert f"FROM {LATEST}" in (shown.modelfile or "")
    assert untagged.status_code == 404  # `llama3.2:latest`, which no worker serves
    assert untagged.json() == {"error": "model 'llama3.2' not found"}


def test_show_of_an_unknown_model_is_404(client: ollama.Client, registered: list[str]) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.show("no-such-model")

    assert raised.value.status_code == 404
    assert raised.value.error == "model 'no-such-model' not found"


def test_an_unknown_model_is_404_in_ollamas_shape(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="no-such-model", prompt="hi", stream=False)

    assert raised.value.status_code == 404
    assert raised.value.error == NOT_FOUND


def test_an_unknown_model_is_404_before_a_stream_starts(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "hi"}]

    with pytest.raises(ollama.ResponseError) as raised:
        list(client.chat(model="no-such-model", messages=messages, stream=True))

    assert raised.value.status_code == 404
    assert raised.value.error == NOT_FOUND


def test_an_unknown_chat_model_is_404(kiln: Kiln, key: str) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}

    response = kiln.client(key).post("/api/chat", json=body)

    assert response.status_code == 404
    assert response.json() == {"error": NOT_FOUND}


def test_a_failure_mid_stream_arrives_as_an_error_line(
    client: ollama.Client, fake_ollama: FakeOllama
) -> None:
    fake_ollama.error_after = 2
    chunks = client.generate(model=MODEL, prompt="a b c d e", stream=True)

    received = [next(chunks).response, next(chunks).response]
    with pytest.raises(ollama.ResponseError) as raised:
        next(chunks)

    assert received == ["Echo:", " a"]
    assert "unexpected EOF" in raised.value.error


def test_an_empty_prompt_only_checks_the_model(
    client: ollama.Client, kiln: Kiln, key: str, registered: list[str]
) -> None:
    loaded = client.generate(model=MODEL)
    chat_loaded = client.chat(model="tinyllama", messages=[])

    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    assert chat_loaded.done_reason == "load"
    assert kiln.client(key).get("/v1/jobs").json()["data"] == []  # no job was made
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="no-such-model")
    assert raised.value.status_code == 404


def test_fields_kiln_cannot_honour_are_refused(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model=MODEL, prompt="def f(", suffix="    return x", stream=False)

    assert raised.value.status_code == 400
    assert raised.value.error == "suffix is not supported by Kiln's Ollama API"


def test_bad_requests_and_missing_keys_answer_in_ollamas_shape(kiln: Kiln, key: str) -> None:
    no_model = kiln.client(key).post("/api/generate", json={"prompt": "hi"})
    no_key = httpx.post(f"{kiln.url}/api/chat", json={"model": MODEL, "messages": []})

    assert no_model.status_code == 400
    assert no_model.json() == {"error": "model: Field required"}
    assert no_key.status_code == 401
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert no_key.json()["error"].startswith("an API key is required")
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=kiln.url).list()
    assert raised.value.status_code == 401


def test_a_slow_call_without_streaming_answers_504_and_the_job_goes_on(
    kiln: Kiln, key: str, fake_ollama: FakeOllama
) -> None:
    fake_ollama.token_delay = 0.5
    body = {"model": MODEL, "prompt": "one two three four five six seven", "stream": False}

    response = kiln.client(key).post("/api/generate", json=body)

    assert response.status_code == 504
    assert response.json()["error"].startswith("still running after 3s")
    job_id = response.headers["location"].rsplit("/", 1)[-1]
    done = kiln.wait_for(key, job_id)
    assert done["result"]["response"] == "Echo: one two three four five six seven"


def test_a_client_that_hangs_up_cancels_the_job(
    client: ollama.Client, kiln: Kiln, key: str, fake_ollama: FakeOllama
) -> None:
    fake_ollama.token_delay = 0.3
    chunks = client.generate(model=MODEL, prompt=" ".join(["slow"] * 60), stream=True)

    assert isinstance(chunks, Generator)
    first = next(chunks)
    chunks.close()  # leaving the client's stream closes its connection

    assert first.response == "Echo:"
    jobs = kiln.client(key)
    deadline = time.monotonic() + 15
    while (job := jobs.get("/v1/jobs", params={"limit": 1}).json()["data"][0])[
        "status"
    ] != "canceled":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    fake_ollama.token_delay = 0.0
    assert client.generate(model=MODEL, prompt="next", stream=False).response == "Echo: next"
