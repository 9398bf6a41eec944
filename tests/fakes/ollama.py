"""A fake Ollama server speaking Ollama's real HTTP wire format over loopback, for tests.

Run it in-process (`with FakeOllama() as fake: fake.url`) or as its own process, which tests can
kill and restart: `python -m tests.fakes.ollama --port N [--token-delay S]`.
"""

import argparse
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.server import LoopbackServer

DEFAULT_MODELS = ("llama3.2:1b",)
VERSION = "0.5.7"
NDJSON = "application/x-ndjson"
DEFAULT_ERROR = "an error was encountered while running the model: unexpected EOF"

# Durations are a function of the counts, so a test can predict every stat exactly.
LOAD_NS = 5_000_000
PROMPT_EVAL_NS_PER_TOKEN = 1_000_000
EVAL_NS_PER_TOKEN = 10_000_000

_START_TIMEOUT = 10.0
PULL_BYTES = 1_321_098_329  # the size /api/tags reports
PULL_STEPS = 4  # progress lines of a pull's download


class _Disconnect(Exception):
    """Raised inside a streaming body to cut the connection, as a crashed Ollama would."""


def _hide_planned_disconnects(record: logging.LogRecord) -> bool:
    """Keep uvicorn from logging a traceback for every disconnect a test asked for."""
    return not (record.exc_info and isinstance(record.exc_info[1], _Disconnect))


logging.getLogger("uvicorn.error").addFilter(_hide_planned_disconnects)


class FakeOllama(LoopbackServer):
    """An Ollama look-alike; its knobs are plain attributes, read on every request."""

    label = "FakeOllama"

    def __init__(
        self,
        models: Iterable[str] = DEFAULT_MODELS,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_delay: float = 0.0,
    ) -> None:
        self._initial_models = list(models)
        self._initial_token_delay = token_delay
        self.reset()

        app = Starlette(
            routes=[
                Route("/", self._root),
                Route("/api/version", self._version),
                Route("/api/tags", self._tags),
                Route("/api/generate", self._generate, methods=["POST"]),
                Route("/api/chat", self._chat, methods=["POST"]),
                Route("/api/pull", self._pull, methods=["POST"]),
                Route("/api/delete", self._delete, methods=["DELETE"]),
            ]
        )
        super().__init__(app, host=host, port=port)

    def reset(self) -> None:
        """Put every knob back to how the server was built, and forget past requests."""

        self.models = list(self._initial_models)
        self.token_delay = self._initial_token_delay  # seconds before each token: slow mode
        self.disconnect_after: int | None = None  # cut the connection after N tokens
        self.error_after: int | None = None  # send an `{"error": ...}` line after N tokens
        self.error_message = DEFAULT_ERROR
        self.requests: list[dict[str, Any]] = []  # bodies of /api/generate, in arrival order
        self.replies: list[str] = []  # scripted completions, used (and removed) one per request
        self.registry: set[str] | None = None  # what /api/pull finds (tagged); None: any name

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def _tags(self, request: Request) -> Response:
        return JSONResponse({"models": [_model_entry(name) for name in self.models]})

    async def _pull(self, request: Request) -> Response:
        """Stream a pull's progress as Ollama does; a name the registry lacks fails mid-stream."""
        body = await _json_body(request)
        name = str(body.get("model") or body.get("name") or "")
        if not name:
            return _error(400, "model is required")
        found = self.registry is None or _tagged(name) in self.registry
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if not found:
            lines.append({"error": "pull model manifest: file does not exist"})
        else:
            digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
            lines += [
                {"status": f"pulling {digest[7:19]}", "digest": digest, "total": PULL_BYTES}
                | {"completed": PULL_BYTES * step // PULL_STEPS}
                for step in range(PULL_STEPS + 1)
            ]
            lines += [{"status": s} for s in ("verifying sha256 digest", "writing manifest")]
            lines.append({"status": "success"})
            if _tagged(name) not in {_tagged(model) for model in self.models}:
                self.models.append(_tagged(name))
        if body.get("stream") is False:
            last = lines[-1]
            return _error(500, last["error"]) if "error" in last else JSONResponse(last)

        async def stream() -> AsyncIterator[str]:
            for line in lines:
                await self._pause(self.token_delay)
                yield _line(line)

        return StreamingResponse(stream(), media_type=NDJSON)

    async def _delete(self, request: Request) -> Response:
        body = await _json_body(request)
        name = _tagged(str(body.get("model") or body.get("name") or ""))
        kept = [model for model in self.models if _tagged(model) != name]
        if len(kept) == len(self.models):
            return _error(404, f"model '{name}' not found")
        self.models = kept
        return Response(status_code=200)

    async def _generate(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "invalid request body")
        self.requests.append(body)
        model = body.get("model")
        if not model:
            return _error(400, "model is required")
        if _tagged(model) not in {_tagged(name) for name in self.models}:
            return _error(404, f'model "{model}" not found, try pulling it first')

        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                return _error(400, "messages is required")
            users = [
                m.get("content", "")
                for m in messages
                if isinstance(m, dict) and m.get("role") == "user"
            ]
            body = {**body, "prompt": users[-1] if users else ""}
        if self.replies:
            tokens, done_reason = re.findall(r"\s*\S+", self.replies.pop(0)), "stop"
        else:
            tokens, done_reason = _tokens(body)
        final = _final(model, body, eval_count=len(tokens), done_reason=done_reason, chat=chat)
        if body.get("stream") is not False:  # Ollama streams unless told not to
            return StreamingResponse(self._stream(model, tokens, final, chat), media_type=NDJSON)
        return await self._whole(tokens, final, chat)

    async def _stream(
        self, model: str, tokens: list[str], final: dict[str, Any], chat: bool
    ) -> AsyncIterator[str]:
        for sent, token in enumerate(tokens):
            if sent == self.error_after:
                yield _line({"error": self.error_message})
                return
            if sent == self.disconnect_after:
                raise _Disconnect()
            await self._pause(self.token_delay)
            if self._stopping():
                raise _Disconnect()
            piece = (
                {"message": {"role": "assistant", "content": token}}
                if chat
                else {"response": token}
            )
            yield _line({"model": model, "created_at": _now(), **piece, "done": False})
        if self.error_after is not None and self.error_after >= len(tokens):
            yield _line({"error": self.error_message})
        elif self.disconnect_after is not None and self.disconnect_after >= len(tokens):
            raise _Disconnect()
        else:
            yield _line({**final, "created_at": _now()})

    async def _whole(self, tokens: list[str], final: dict[str, Any], chat: bool) -> Response:
        """Answer `stream: false` the way Ollama does: one JSON object, once generation ends."""
        await self._pause(self.token_delay * len(tokens))
        if self.error_after is not None:
            return _error(500, self.error_message)
        text = "".join(tokens)
        whole = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
        body = json.dumps({**final, **whole}).encode()
        if self.disconnect_after is None:
            return Response(body, media_type="application/json; charset=utf-8")

        async def cut() -> AsyncIterator[bytes]:
            yield body[: len(body) // 2]
            raise _Disconnect()

        headers = {"content-length": str(len(body))}
        return StreamingResponse(cut(), headers=headers, media_type="application/json")


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _tagged(name: str) -> str:
    """Ollama's model names default to the `latest` tag."""
    return name if ":" in name else f"{name}:latest"


def _tokens(body: dict[str, Any]) -> tuple[list[str], str]:
    """The deterministic completion: "Echo: " and the prompt's words, one token per word."""
    prompt = str(body.get("prompt") or "")
    if not prompt:
        return [], "load"  # Ollama answers an empty prompt by just loading the model
    text = "Echo: " + " ".join(prompt.split())
    if body.get("format"):
        text = json.dumps({"echo": prompt})
    tokens = re.findall(r"\s*\S+", text)
    options = body.get("options") or {}
    limit = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(limit, int) and 0 <= limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def _final(
    model: str, body: dict[str, Any], *, eval_count: int, done_reason: str, chat: bool = False
) -> dict[str, Any]:
    prompt_eval_count = len(str(body.get("prompt") or "").split()) + 1  # the words and a BOS
    prompt_eval_duration = prompt_eval_count * PROMPT_EVAL_NS_PER_TOKEN
    eval_duration = eval_count * EVAL_NS_PER_TOKEN
    # /api/chat ends with an empty assistant message; /api/generate with the context tokens.
    ending: dict[str, Any] = (
        {"message": {"role": "assistant", "content": ""}}
        if chat
        else {"response": "", "context": list(range(prompt_eval_count + eval_count))}
    )
    return {
        "model": model,
        "created_at": _now(),
        **ending,
        "done": True,
        "done_reason": done_reason,
        "total_duration": LOAD_NS + prompt_eval_duration + eval_duration,
        "load_duration": LOAD_NS,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": prompt_eval_duration,
        "eval_count": eval_count,
        "eval_duration": eval_duration,
    }


def _model_entry(name: str) -> dict[str, Any]:
    family, _, size = name.partition(":")
    family = re.sub(r"[\d.]+$", "", family) or family
    return {
        "name": _tagged(name),
        "model": _tagged(name),
        "modified_at": "2024-10-01T12:00:00.000000000Z",
        "size": 1_321_098_329,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": size.upper() if size and size != "latest" else "3.2B",
            "quantization_level": "Q8_0",
        },
    }


def _line(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":")) + "\n"


def _error(status_code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--model", action="append", dest="models", help="repeatable")
    args = parser.parse_args()
    fake = FakeOllama(
        args.models or DEFAULT_MODELS, host=args.host, port=args.port, token_delay=args.token_delay
    )
    fake.serve_forever()


if __name__ == "__main__":
    main()
