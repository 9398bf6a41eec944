"""A fake OpenAI-compatible server speaking the Chat Completions wire format over loopback.

Run it in-process (`with FakeOpenAI() as fake: fake.url`, the base URL ending in `/v1`) or as
its own process: `python -m tests.fakes.openai_server --port N [--token-delay S]`.
"""

import argparse
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer

DEFAULT_MODELS = ("gpt-test",)
DEFAULT_API_KEY = "sk-test-key"
DEFAULT_ERROR = "The server had an error while processing your request. Sorry about that!"
OWNER = "kiln-fake"
FINGERPRINT = "fp_kiln_fake"
FORMATS = ("text", "json_object", "json_schema")  # the `response_format` types OpenAI knows
MESSAGE_OVERHEAD = 3  # prompt tokens each message adds beyond its words, as chat templates do

_START_TIMEOUT = 10.0


class _Disconnect(Exception):
    """Raised inside a streaming body to cut the connection, as a crashed server would."""


def _hide_planned_disconnects(record: logging.LogRecord) -> bool:
    """Keep uvicorn from logging a traceback for every disconnect a test asked for."""
    return not (record.exc_info and isinstance(record.exc_info[1], _Disconnect))


logging.getLogger("uvicorn.error").addFilter(_hide_planned_disconnects)


class _Refusal(Exception):
    """An OpenAI-shaped error answer, raised while checking a request."""

    def __init__(self, status_code: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.response = _error(status_code, message, **fields)


class FakeOpenAI(LoopbackServer):
    """An OpenAI look-alike; its knobs are plain attributes, read on every request."""

    label = "FakeOpenAI"

    def __init__(
        self,
        models: Iterable[str] = DEFAULT_MODELS,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        token_delay: float = 0.0,
    ) -> None:
        self._initial_models = list(models)
        self._initial_api_key = api_key
        self._initial_token_delay = token_delay
        self.reset()

        app = Starlette(
            routes=[
                Route("/v1/models", self._models),
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
            ],
            exception_handlers={404: _invalid_url, 405: _invalid_url},
        )
        super().__init__(app, host=host, port=port, path="/v1")

    def reset(self) -> None:
        """Put every knob back to how the server was built, and forget past requests."""

        self.models = list(self._initial_models)
        self.api_key = self._initial_api_key  # None: no Authorization needed, like bare vLLM
        self.token_delay = self._initial_token_delay  # seconds before each token: slow mode
        self.disconnect_after: int | None = None  # cut the connection after N tokens
        self.error_after: int | None = None  # send an `{"error": ...}` event after N tokens
        self.error_message = DEFAULT_ERROR
        self.send_done = True  # False: end the stream cleanly but without `data: [DONE]`
        self.rate_limit_next = 0  # answer this many coming completion requests with a 429
        self.retry_after: int | None = 20  # the 429's `retry-after` header; None leaves it out
        self.requests: list[dict[str, Any]] = []  # completion request bodies, in arrival order
        self.replies: list[str] = []  # scripted completions, used (and removed) one per request

    def _authorize(self, request: Request) -> None:
        """Check the bearer key the way OpenAI does, quoting only a masked part of a wrong one."""
        if self.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _Refusal(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if not secrets.compare_digest(key.strip(), self.api_key):
            raise _Refusal(
                401,
                f"Incorrect API key provided: {_masked(key.strip())}. You can find your API key "
                "at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    async def _models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except _Refusal as refusal:
            return refusal.response
        return JSONResponse({"object": "list", "data": [_model_entry(m) for m in self.models]})

    async def _chat_completions(self, request: Request) -> Response:
        try:
            self._authorize(request)
            body = await _json_body(request)
            self.requests.append(body)
            self._check_rate_limit(body)
            self._check(body)
        except _Refusal as refusal:
            return refusal.response

        if self.replies:
            tokens, finish_reason = _split(self.replies.pop(0)), "stop"
        else:
            tokens, finish_reason = _tokens(body)
        usage = _usage(body["messages"], completion_tokens=len(tokens))
        completion = _Reply(
            id=f"chatcmpl-{secrets.token_hex(12)}",
            created=int(time.time()),
            model=body["model"],
            tokens=tokens,
            finish_reason=finish_reason,
            usage=usage,
        )
        if body.get("stream"):
            options = body.get("stream_options") or {}
            chunks = self._stream(completion, include_usage=bool(options.get("include_usage")))
            return StreamingResponse(chunks, media_type="text/event-stream")
        return await self._whole(completion)

    def _check_rate_limit(self, body: dict[str, Any]) -> None:
        if self.rate_limit_next <= 0:
            return
        self.rate_limit_next -= 1
        headers = {} if self.retry_after is None else {"retry-after": str(self.retry_after)}
        raise _Refusal(
            429,
            f"Rate limit reached for {body.get('model')} in organization org-kiln-fake on "
            "requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in "
            f"{self.retry_after or 20}s.",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )

    def _check(self, body: dict[str, Any]) -> None:
        """Refuse the bodies OpenAI refuses, with OpenAI's messages."""
        model = body.get("model")
        if not model:
            raise _Refusal(400, "you must provide a model parameter")
        messages = body.get("messages")
        if messages is None:
            raise _Refusal(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        if not isinstance(messages, list) or not messages:
            raise _Refusal(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param="messages",
                code="empty_array",
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise _Refusal(
                    400,
                    f"Invalid value for 'messages[{index}]': expected a role and a content.",
                    param=f"messages[{index}]",
                    code="invalid_value",
                )
        if body.get("stream_options") is not None and not body.get("stream"):
            raise _Refusal(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        response_format = body.get("response_format") or {"type": "text"}
        if not isinstance(response_format, dict) or response_format.get("type") not in FORMATS:
            raise _Refusal(
                400,
                "Invalid value for 'response_format.type': expected one of 'text', "
                "'json_object' or 'json_schema'.",
                param="response_format.type",
                code="invalid_value",
            )
        if response_format["type"] == "json_schema":
            schema = response_format.get("json_schema")
            if not isinstance(schema, dict) or not schema.get("name"):
                raise _Refusal(
                    400,
                    "Missing required parameter: 'response_format.json_schema.name'.",
                    param="response_format.json_schema.name",
                    code="missing_required_parameter",
                )
        if model not in self.models:
            raise _Refusal(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )

    async def _stream(self, reply: "_Reply", *, include_usage: bool) -> AsyncIterator[str]:
        # With include_usage, every chunk carries `"usage": null` but the extra last one.
        extra = {"usage": None} if include_usage else {}
        yield _event(reply.chunk({"role": "assistant", "content": ""}, None, **extra))
        for sent, token in enumerate(reply.tokens):
            if sent == self.error_after:
                yield _event({"error": _error_body(self.error_message, type="server_error")})
                return
            if sent == self.disconnect_after:
                raise _Disconnect()
            await self._pause(self.token_delay)
            if self._stopping():
                raise _Disconnect()
            yield _event(reply.chunk({"content": token}, None, **extra))
        if self.error_after is not None and self.error_after >= len(reply.tokens):
            yield _event({"error": _error_body(self.error_message, type="server_error")})
            return
        if self.disconnect_after is not None and self.disconnect_after >= len(reply.tokens):
            raise _Disconnect()
        yield _event(reply.chunk({}, reply.finish_reason, **extra))
        if include_usage:
            yield _event({**reply.chunk({}, None), "choices": [], "usage": reply.usage})
        if self.send_done:
            yield "data: [DONE]\n\n"

    async def _whole(self, reply: "_Reply") -> Response:
        """Answer `stream: false`: one `chat.completion` object, once generation ends."""
        await self._pause(self.token_delay * len(reply.tokens))
        if self.error_after is not None:
            return _error(500, self.error_message, type="server_error")
        body = json.dumps(reply.whole()).encode()
        if self.disconnect_after is None:
            return Response(body, media_type="application/json")

        async def cut() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]
            raise _Disconnect()

        headers = {"content-length": str(len(body))}
        return StreamingResponse(cut(), headers=headers, media_type="application/json")


@dataclass(frozen=True)
class _Reply:
    """One completion the fake is about to send, streamed or whole."""

    id: str
    created: int
    model: str
    tokens: list[str]
    finish_reason: str
    usage: dict[str, int]

    def chunk(
        self, delta: dict[str, Any], finish_reason: str | None, **extra: Any
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("chat.completion.chunk"), "choices": [choice], **extra}

    def whole(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(self.tokens), "refusal": None}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": self.usage}

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _Refusal(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    return body


async def _invalid_url(request: Request, exc: Exception) -> Response:
    """OpenAI's answer to a path it does not serve, as a wrong base URL produces."""
    return _error(404, f"Invalid URL ({request.method} {request.url.path})")


def _masked(key: str) -> str:
    """A wrong key as OpenAI quotes it: a few characters at each end."""
    return f"{key[:3]}{'*' * max(len(key) - 7, 0)}{key[-4:]}" if len(key) > 8 else "****"


def _split(text: str) -> list[str]:
    """Tokens as the fake counts them: each word with the whitespace before it."""
    return re.findall(r"\s*\S+", text)


def _tokens(body: dict[str, Any]) -> tuple[list[str], str]:
    """The deterministic completion: "Echo: " and the last user message's words."""
    users = [m["content"] for m in body["messages"] if m.get("role") == "user"]
    said = users[-1] if users else ""
    text = "Echo: " + " ".join(said.split())
    response_format = body.get("response_format") or {}
    if response_format.get("type") in ("json_schema", "json_object"):
        text = json.dumps({"echo": said})
    tokens = _split(text)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and 0 <= limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def _usage(messages: list[dict[str, Any]], *, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(len(m["content"].split()) + MESSAGE_OVERHEAD for m in messages)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": OWNER}


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict[str, Any]:
    return {"message": message, "type": type, "param": param, "code": code}


def _error(
    status_code: int, message: str, *, headers: dict[str, str] | None = None, **fields: Any
) -> Response:
    body = {"error": _error_body(message, **fields)}
    return JSONResponse(body, status_code=status_code, headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--model", action="append", dest="models", help="repeatable")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help='"" accepts any request')
    args = parser.parse_args()
    fake = FakeOpenAI(
        args.models or DEFAULT_MODELS,
        api_key=args.api_key or None,
        host=args.host,
        port=args.port,
        token_delay=args.token_delay,
    )
    fake.serve_forever()


if __name__ == "__main__":
    main()
