"""OpenAI's Chat Completions API over Kiln's chat jobs, driven by the official `openai` client."""

import json
import time

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionContentPartImageParam, ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema

from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln

ONE_DATABASE = True  # the OpenAI adapter only translates; the native routes run on both databases

MODEL = "llama3.2:1b"
SYNC_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    return {
        "KILN_LLM_PROVIDER": "ollama",
        "KILN_OLLAMA_URL": ollama_server.url,
        "KILN_SYNC_TIMEOUT_S": str(SYNC_TIMEOUT_S),
    }


@pytest.fixture(autouse=True)
def fresh_fake(fake_ollama: FakeOllama) -> FakeOllama:
    """Every test starts with a fast fake, whatever the test before it slowed or broke."""
    return fake_ollama


def client_for(kiln: Kiln, key: str) -> OpenAI:
    # No retries: every failure a test provokes should reach it at once.
    return OpenAI(base_url=f"{kiln.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_a_completion_answers_with_the_reply_and_usage(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    key = kiln.new_key()

    completion = client_for(kiln, key).chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "how are you"},
        ],
    )

    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: how are you"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4  # the fake counts the words and a BOS
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 8
    assert fake_ollama.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "how are you"},
    ]
    job_id = completion.id.removeprefix("chatcmpl-")
    job = kiln.client(key).get(f"/v1/jobs/{job_id}").json()
    assert (job["kind"], job["status"]) == ("chat", "succeeded")


def test_request_fields_become_the_jobs_options(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    completion = client_for(kiln, kiln.new_key()).chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Answer in English."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}],
            },
        ],
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop="END",
        max_completion_tokens=2,
        user="someone",  # a field Kiln has no use for: ignored, not refused
        extra_body={"not_an_openai_field": True},
    )

    sent = fake_ollama.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "one two\nthree"},
    ]
    assert sent["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END"],
        "num_predict": 2,
    }
    assert completion.choices[0].message.content == "Echo: one"
    assert completion.choices[0].finish_reason == "length"


def test_a_json_schema_response_format_constrains_the_output(
    kiln: Kiln, fake_ollama: FakeOllama
) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"echo": {"type": "string"}}}
    json_schema: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "echo", "schema": schema},
    }
    client = client_for(kiln, kiln.new_key())
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "json please"}]

    structured = client.chat.completions.create(
        model=MODEL, messages=messages, response_format=json_schema
    )
    structured_request = fake_ollama.requests[-1]
    json_mode = client.chat.completions.create(
        model=MODEL, messages=messages, response_format={"type": "json_object"}, max_tokens=50
    )

    assert structured_request["format"] == schema
    assert json.loads(structured.choices[0].message.content or "") == {"echo": "json please"}
    assert fake_ollama.requests[-1]["format"] == "json"
    assert fake_ollama.requests[-1]["options"] == {"num_predict": 50}
    assert json.loads(json_mode.choices[0].message.content or "") == {"echo": "json please"}


def test_a_completion_outlasting_the_sync_timeout_still_answers(
    kiln: Kiln, fake_ollama: FakeOllama
) -> None:
    fake_ollama.token_delay = 0.5  # 6 tokens: 3 s, beyond KILN_SYNC_TIMEOUT_S
    started = time.monotonic()

    completion = client_for(kiln, kiln.new_key()).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b c d e"}]
    )

    assert time.monotonic() - started > SYNC_TIMEOUT_S
    assert completion.choices[0].message.content == "Echo: a b c d e"


def test_streaming_sends_role_deltas_finish_reason_and_usage(kiln: Kiln) -> None:
    stream = client_for(kiln, kiln.new_key()).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "alpha beta gamma"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta]
    assert [d for d in deltas if d] == ["Echo:", " alpha", " beta", " gamma"]
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == "stop"
    assert all(reason is None for reason in finishing[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 4
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + 4
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_streaming_without_include_usage_sends_no_usage_chunk(kiln: Kiln) -> None:
    stream = client_for(kiln, kiln.new_key()).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)

    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hi"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_wire_format_is_openais_even_when_the_first_token_is_slow(
    kiln: Kiln, fake_ollama: FakeOllama
) -> None:
    fake_ollama.token_delay = 3.5  # the answer's headers cannot wait for the first token
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    client = kiln.client(kiln.new_key())
    started = time.monotonic()

    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        headers_after = time.monotonic() - started
        lines, token_times = [], []
        for line in response.iter_lines():
            if line and not line.startswith(":"):
                lines.append(line)
                if '"content":"E' in line.replace(" ", ""):  # the first token, "Echo:"
                    token_times.append(time.monotonic() - started)
        first_token_after = token_times[0]

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    # Ordered, not timed: the headers came before the token the backend holds back for 3.5 s
    # (had they waited for it, the two would arrive together).
    assert first_token_after - headers_after > 1.0
    assert all(line.startswith("data: ") for line in lines)  # no `event:` or `id:` fields
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Echo: hi"
    assert "usage" not in chunks[0]


def test_a_client_that_hangs_up_cancels_the_job(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.token_delay = 0.3
    key = kiln.new_key()
    stream = client_for(kiln, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": " ".join(["slow"] * 60)}], stream=True
    )

    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # hang up after the first token
    stream.close()

    job = kiln.wait_for(key, chunk.id.removeprefix("chatcmpl-"), timeout=15)
    assert job["status"] == "canceled"


def test_a_failure_mid_stream_raises_in_the_client(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.error_after = 2
    stream = client_for(kiln, kiln.new_key()).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    received: list[str] = []

    def read_to_the_end() -> None:
        for chunk in stream:
            received.extend(c.delta.content for c in chunk.choices if c.delta.content)

    with pytest.raises(openai.APIError) as raised:
        read_to_the_end()

    assert received == ["Echo:", " one"]
    assert "unexpected EOF" in raised.value.message


def test_models_lists_the_fakes_model(kiln: Kiln) -> None:
    client = client_for(kiln, kiln.new_key())
    deadline = time.monotonic() + 20
    while not (models := client.models.list().data):  # workers register within a heartbeat
        assert time.monotonic() < deadline
        time.sleep(0.2)

    assert [model.id for model in models] == [MODEL]
    assert models[0].object == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_model_raises_not_found(kiln: Kiln, stream: bool) -> None:
    client = client_for(kiln, kiln.new_key())

    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], stream=stream
        )

    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert "no-such-model" in raised.value.message


def test_a_wrong_key_raises_authentication_error(kiln: Kiln) -> None:
    client = client_for(kiln, "kiln_not-a-real-key")

    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    assert raised.value.status_code == 401
    assert raised.value.code == "unauthorized"


def test_what_kiln_cannot_do_is_refused_with_422(kiln: Kiln) -> None:
    client = client_for(kiln, kiln.new_key())
    image: ChatCompletionContentPartImageParam = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA"},
    }

    with pytest.raises(openai.UnprocessableEntityError) as picture:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(openai.UnprocessableEntityError) as several:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2
        )

    assert "messages.0.content.0: only text parts" in picture.value.message
    assert several.value.code == "invalid_input"
    assert "n:" in several.value.message
