"""The OpenAI-compatible backend (OpenAI, vLLM, llama.cpp's server): streams `/chat/completions`
and maps the server's failures onto Kiln's errors."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.exceptions import JobCanceled, LLMFailed, LLMUnavailable, ModelNotFound
from shared.llm.base import (
    ChatMessage,
    ChatRequest,
    GenerateRequest,
    GenerateResult,
    StopCheck,
    TokenSink,
)
from shared.llm.http_backend import HttpBackend

# Options with the same name and meaning in Ollama's `options` and in the Chat Completions body.
# Others (num_ctx, top_k, ...) are dropped: OpenAI answers 400 to a field it does not know.
SHARED_OPTIONS = ("temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty")
DONE = "[DONE]"  # the data of the event that ends a stream
SCHEMA_NAME = "output"  # response_format needs a name; the job input carries only the schema
KEY_REJECTED = "the OpenAI-compatible server rejected the API key"
TRANSIENT_STATUSES = (429, 502, 503, 504)  # rate limits, and proxies or a server starting up


class OpenAIProvider(HttpBackend):
    """Talks to one server that speaks OpenAI's Chat Completions API."""

    name = "openai"
    server = "the OpenAI-compatible server"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        client: httpx.Client | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
    ) -> None:
        super().__init__(
            base_url, client=client, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        # Sent per request rather than set on the client, so an injected client works too.
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def generate(
        self, request: GenerateRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        """Stream one completion as a one-turn chat; see `LLMProvider.generate` for the errors."""
        messages = [ChatMessage("system", request.system)] if request.system else []
        messages.append(ChatMessage("user", request.prompt))
        chat = ChatRequest(messages, request.model, request.options, request.format)
        return self.chat(chat, on_token=on_token, should_stop=should_stop)

    def chat(
        self, request: ChatRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        """Stream the assistant's reply; see `LLMProvider.generate` for the errors it raises."""
        body = _chat_body(request)
        url = f"{self.base_url}/chat/completions"
        completion = _Completion(model=request.model)
        with (
            self._errors_mapped(),
            self._client.stream("POST", url, json=body, headers=self._headers) as response,
        ):
            _raise_for_status(response, self._label, model=request.model)
            _require_event_stream(response, self._label)
            for data in _sse_data(response):
                if data == DONE:
                    return completion.result()
                chunk = _parse_chunk(data)
                if chunk.get("error"):
                    raise LLMFailed(_error_fields(chunk)[0] or f"error event: {data[:200]}")
                if delta := completion.add(chunk):
                    on_token(delta)
                if should_stop():
                    raise JobCanceled()  # leaving the `with` closes the response
        raise LLMUnavailable(f"{self._label}: stream ended before completion")

    def list_models(self) -> list[dict[str, Any]]:
        """The models the server offers, as `/models` lists them."""
        with self._errors_mapped():
            response = self._client.get(f"{self.base_url}/models", headers=self._headers)
        _raise_for_status(response, self._label, model=None)
        models: list[dict[str, Any]] = response.json().get("data", [])
        return models


@dataclass
class _Completion:
    """What the chunks of one streamed completion said so far, and when they said it."""

    model: str
    started_ns: int = field(default_factory=time.monotonic_ns)
    first_token_ns: int | None = None
    deltas: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)

    def add(self, chunk: dict[str, Any]) -> str | None:
        """Take in one chunk; return its text delta, if it has one."""
        self.model = chunk.get("model") or self.model
        # OpenAI sends usage in a last chunk of its own; some servers on the finish_reason one.
        if isinstance(usage := chunk.get("usage"), dict):
            self.usage = usage
        choices = chunk.get("choices") or []  # some servers' usage chunk says `"choices": null`
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        if not content or not isinstance(content, str):
            return None
        if self.first_token_ns is None:
            self.first_token_ns = time.monotonic_ns()
        self.deltas.append(content)
        return content

    def result(self) -> GenerateResult:
        """The finished completion, with durations measured here: the API reports none."""
        ended_ns = time.monotonic_ns()
        first_ns = self.first_token_ns
        return GenerateResult(
            response="".join(self.deltas),
            model=self.model,
            provider=OpenAIProvider.name,
            done_reason=self.finish_reason,
            prompt_eval_count=self.usage.get("prompt_tokens"),
            eval_count=self.usage.get("completion_tokens"),
            total_duration=ended_ns - self.started_ns,
            load_duration=None,
            prompt_eval_duration=None if first_ns is None else first_ns - self.started_ns,
            eval_duration=None if first_ns is None else ended_ns - first_ns,
        )


def _chat_body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    options = request.options
    body.update({name: options[name] for name in SHARED_OPTIONS if options.get(name) is not None})
    # Ollama's `num_predict` is OpenAI's `max_tokens`; an explicit `max_tokens` wins.
    max_tokens = options.get("max_tokens", options.get("num_predict"))
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if request.format:
        body["response_format"] = _response_format(request.format)
    return body


def _response_format(format: dict[str, Any] | str) -> dict[str, Any]:
    """Ollama's `format` (a JSON schema, or "json") as OpenAI's `response_format`."""
    if isinstance(format, dict):
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": format}}
    if format == "json":
        return {"type": "json_object"}
    raise LLMFailed(f'unsupported format {format!r}: give a JSON schema or "json"')


def _raise_for_status(response: httpx.Response, label: str, *, model: str | None) -> None:
    """Raise Kiln's error for a non-2xx answer, carrying the server's own message."""
    if response.is_success:
        return
    response.read()
    status = response.status_code
    message, code, param = _error_fields(_json_object(response))
    if status in (401, 403):
        raise LLMFailed(KEY_REJECTED)  # the server's message may quote part of the key
    if code == "model_not_found" or (status == 404 and _names_model(message, param, model)):
        raise ModelNotFound(message or f"model {model!r} not found")
    message = message or f"{label} answered {status}: {response.text.strip()[:200]}"
    if code == "insufficient_quota":  # OpenAI's 429 for an exhausted balance: retrying won't help
        raise LLMFailed(message)
    if status in TRANSIENT_STATUSES:
        retry_after = _retry_after(response)
        if retry_after is not None:
            raise LLMUnavailable(
                f"{message} (retry after {retry_after:g} s)", details={"retry_after": retry_after}
            )
        raise LLMUnavailable(message)
    raise LLMFailed(message)


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds `retry-after` asks to wait; None when absent or an HTTP date (rarely sent)."""
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _names_model(message: str | None, param: Any, model: str | None) -> bool:
    """Whether a 404 is about the model, not about a wrong base URL (OpenAI's "Invalid URL")."""
    if model is None or message is None:
        return False
    return param == "model" or model in message


def _error_fields(body: dict[str, Any]) -> tuple[str | None, Any, Any]:
    """The message, code and param of an error body, or Nones when it is not one."""
    error = body.get("error", body)  # OpenAI nests the fields; older vLLM releases do not
    if isinstance(error, str):
        return error, None, None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None, None, None
    return error["message"], error.get("code"), error.get("param")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}  # not the server's JSON error: a proxy's page, or the wrong base URL
    return body if isinstance(body, dict) else {}


def _require_event_stream(response: httpx.Response, label: str) -> None:
    """Refuse a 2xx that is not a stream: a base URL that points at some other web server."""
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise LLMFailed(f"{label} answered {content_type or 'no content type'}, not a stream")


def _sse_data(response: httpx.Response) -> Iterator[str]:
    """The `data` of each server-sent event.

    Servers put each JSON chunk on one `data:` line, so a line is an event; comments (`:`),
    `event:`/`id:` lines and the blank lines between events carry nothing Kiln needs.
    """
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield line.removeprefix("data:").strip()


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise LLMFailed(f"the server sent an event that is not JSON: {data[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise LLMFailed(f"the server sent an event that is not a JSON object: {data[:200]!r}")
    return chunk
