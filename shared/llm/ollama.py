"""The Ollama backend: streams `/api/generate` and `/api/chat`, and maps Ollama's failures
onto Kiln's errors."""

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx

from shared.exceptions import JobCanceled, LLMFailed, LLMUnavailable, ModelNotFound
from shared.llm.base import ChatRequest, GenerateRequest, GenerateResult, StopCheck, TokenSink
from shared.llm.http_backend import HttpBackend

ProgressSink = Callable[[dict[str, Any]], None]
"""Receives each progress line of a pull (`status`, and `total`/`completed` while downloading)."""


class OllamaProvider(HttpBackend):
    """Talks to one Ollama server over its native HTTP API."""

    name = "ollama"
    server = "Ollama"

    def generate(
        self, request: GenerateRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        """Stream one completion; see `LLMProvider.generate` for the errors it raises."""
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "stream": True}
        optional = {"system": request.system, "options": request.options, "format": request.format}
        body.update({key: value for key, value in optional.items() if value})
        return self._stream("/api/generate", body, _generate_delta, on_token, should_stop)

    def chat(
        self, request: ChatRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        """Stream one reply to a conversation through `/api/chat`."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
        optional = {"options": request.options, "format": request.format}
        body.update({key: value for key, value in optional.items() if value})
        return self._stream("/api/chat", body, _chat_delta, on_token, should_stop)

    def _stream(
        self,
        path: str,
        body: dict[str, Any],
        delta_of: Callable[[dict[str, Any]], str],
        on_token: TokenSink,
        should_stop: StopCheck,
    ) -> GenerateResult:
        url = f"{self.base_url}{path}"
        deltas: list[str] = []
        with self._errors_mapped(), self._client.stream("POST", url, json=body) as response:
            _raise_for_status(response)
            for chunk in _ndjson(response, LLMFailed):
                if delta := delta_of(chunk):
                    deltas.append(delta)
                    on_token(delta)
                if chunk.get("done"):
                    return _result("".join(deltas), chunk, fallback_model=body["model"])
                if should_stop():
                    raise JobCanceled()  # leaving the `with` closes the response
        raise LLMUnavailable(f"{self._label}: stream ended before completion")

    def list_models(self) -> list[dict[str, Any]]:
        """The models Ollama has pulled, as `/api/tags` lists them."""
        with self._errors_mapped():
            response = self._client.get(f"{self.base_url}/api/tags")
        _raise_for_status(response)
        models: list[dict[str, Any]] = response.json().get("models", [])
        return models

    def pull(self, model: str, *, on_progress: ProgressSink, should_stop: StopCheck) -> None:
        """Pull `model` through `/api/pull`, passing on each progress line as Ollama sends it.

        Raises `ModelNotFound` when the registry has no such model.
        """
        url = f"{self.base_url}/api/pull"
        body = {"model": model, "stream": True}
        with self._errors_mapped(), self._client.stream("POST", url, json=body) as response:
            _raise_for_status(response)
            for chunk in _ndjson(response, partial(_pull_error, model)):
                on_progress(chunk)
                if chunk.get("status") == "success":
                    return
                if should_stop():
                    raise JobCanceled()
        raise LLMUnavailable(f"{self._label}: the pull ended before it finished")

    def delete(self, model: str) -> None:
        """Delete `model` through `/api/delete`; `ModelNotFound` if Ollama has no such model."""
        with self._errors_mapped():
            response = self._client.request(
                "DELETE", f"{self.base_url}/api/delete", json={"model": model}
            )
        _raise_for_status(response)


def _raise_for_status(response: httpx.Response) -> None:
    """Raise Kiln's error for a non-2xx answer, carrying Ollama's own `error` message."""
    if response.is_success:
        return
    response.read()
    try:
        message: str | None = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = None  # not Ollama's JSON error: a proxy's page, or the wrong base URL
    if response.status_code == 404 and message is not None:
        raise ModelNotFound(message)
    message = message or f"Ollama answered {response.status_code}: {response.text.strip()[:200]}"
    if response.status_code in (502, 503, 504):  # a proxy or a server still starting up
        raise LLMUnavailable(message)
    raise LLMFailed(message)


def _pull_error(model: str, message: str) -> LLMFailed | ModelNotFound:
    # Ollama streams a missing manifest as an error line after `200 OK`.
    if "file does not exist" in message or "not found" in message:
        return ModelNotFound(f"model {model!r} is not in the registry: {message}")
    return LLMFailed(message)


def _generate_delta(chunk: dict[str, Any]) -> str:
    return str(chunk.get("response") or "")


def _chat_delta(chunk: dict[str, Any]) -> str:
    message = chunk.get("message")
    return str(message.get("content") or "") if isinstance(message, dict) else ""


def _ndjson(
    response: httpx.Response, failure: Callable[[str], Exception]
) -> Iterator[dict[str, Any]]:
    """The objects of a streamed answer, one a line; a line carrying `error` (Ollama's way to
    fail after `200 OK`) is raised as `failure(error)`, a line that is no object as `LLMFailed`."""
    for line in response.iter_lines():
        if not line.strip():
            continue
        chunk = _parse_line(line)
        if "error" in chunk:
            raise failure(str(chunk["error"]))
        yield chunk


def _parse_line(line: str) -> dict[str, Any]:
    try:
        chunk = json.loads(line)
    except ValueError as exc:
        raise LLMFailed(f"Ollama sent a line that is not JSON: {line[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise LLMFailed(f"Ollama sent a line that is not a JSON object: {line[:200]!r}")
    return chunk


def _result(response: str, final: dict[str, Any], *, fallback_model: str) -> GenerateResult:
    return GenerateResult(
        response=response,
        model=final.get("model") or fallback_model,
        provider=OllamaProvider.name,
        done_reason=final.get("done_reason"),
        prompt_eval_count=final.get("prompt_eval_count"),
        eval_count=final.get("eval_count"),
        total_duration=final.get("total_duration"),
        load_duration=final.get("load_duration"),
        prompt_eval_duration=final.get("prompt_eval_duration"),
        eval_duration=final.get("eval_duration"),
    )
