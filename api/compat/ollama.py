"""Ollama's API (`/api/generate`, `/api/chat`, `/api/tags`, `/api/show`) over Kiln's jobs, so
Ollama's clients work unchanged: a call becomes a `generate` or `chat` job, and the job's tokens
and result become Ollama's NDJSON lines or single object. Models come from the worker registry."""

from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import calls
from api.deps import BaseURLDep, KeyDep, SettingsDep
from api.errors import field_name
from api.limits import RateLimited
from shared.config import Settings
from shared.exceptions import KilnError, Unauthorized
from shared.models import ApiKey
from shared.registry import servable_models
from shared.states import JobStatus

NDJSON = "application/x-ndjson"
STATS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
"""The counts and durations (nanoseconds) of a finished generation, as Ollama names them."""

UNSUPPORTED = ("suffix", "images", "template", "context", "raw", "tools", "think")
"""Request fields Kiln cannot honour: refused when set rather than silently dropped (fields that
change nothing but the backend's housekeeping, like `keep_alive`, are accepted and ignored)."""

UNSUPPORTED_IN_MESSAGES = ("images", "tool_calls")

Piece = Callable[[str], dict[str, Any]]
"""Wraps generated text the way an endpoint carries it: `response`, or an assistant `message`."""


class OllamaRoute(APIRoute):
    """Answers the errors raised before a route body runs (an invalid body, a missing key) in
    Ollama's `{"error": "..."}`, which its clients read, rather than Kiln's nested shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = exc.errors()
                first = f"{field_name(errors[0]['loc'])}: {errors[0]['msg']}" if errors else None
                return error(400, first or "invalid request")
            except KilnError as exc:
                headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
                if isinstance(exc, RateLimited):
                    headers = exc.headers
                return error(exc.status_code, exc.message, headers)

        return handle


router = APIRouter(tags=["ollama"], route_class=OllamaRoute)


class OllamaCall(BaseModel):
    """What `/api/generate` and `/api/chat` share; unknown fields are accepted, as Ollama does."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    options: dict[str, Any] | None = None
    format: dict[str, Any] | Literal["json", ""] | None = Field(
        None, description="`json` or a JSON schema to constrain the output."
    )
    stream: bool = Field(True, description="NDJSON chunks (Ollama's default), or one object.")


class GenerateRequest(OllamaCall):
    """`POST /api/generate`: one prompt; an empty one only checks that the model is there."""

    prompt: str = ""
    system: str | None = None


class OllamaMessage(BaseModel):
    """One turn of a conversation, as Ollama's clients send it."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""


class ChatRequest(OllamaCall):
    """`POST /api/chat`: a conversation; with no messages, only checks that the model is there."""

    messages: list[OllamaMessage] = Field(default_factory=list)


class ShowRequest(BaseModel):
    """`POST /api/show`: a model, named `model` (or `name`, as older clients do)."""

    model: str | None = None
    name: str | None = None


class ModelDetails(BaseModel):
    """Facts about a model's weights; Kiln's registry knows only names, so these stay empty."""

    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] = Field(default_factory=list)
    parameter_size: str = ""
    quantization_level: str = ""


class TagModel(BaseModel):
    """One model of `/api/tags`."""

    name: str
    model: str
    modified_at: str
    size: int = 0
    digest: str = ""
    details: ModelDetails = Field(default_factory=ModelDetails)


class TagList(BaseModel):
    models: list[TagModel]


class ShowResponse(BaseModel):
    """A minimal `/api/show`: what Kiln knows of a model is that a GPU worker serves it."""

    modelfile: str
    parameters: str = ""
    template: str = ""
    details: ModelDetails = Field(default_factory=ModelDetails)
    model_info: dict[str, Any] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=lambda: ["completion"])
    modified_at: str


class OllamaError(BaseModel):
    """Ollama's error shape."""

    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OllamaError} for code in (400, 401, 404, 409, 422, 502, 503, 504)
}
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With `stream` (the default), NDJSON chunks; else one JSON object.",
        "content": {NDJSON: {}, "application/json": {}},
    },
    **ERRORS,
}


@router.post("/api/generate", response_model=None, responses=STREAMED)
async def generate(
    body: GenerateRequest,
    settings: SettingsDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
) -> Response:
    """Ollama's completion: NDJSON chunks of `response`, then the stats (a `generate` job)."""
    if refused := _unsupported(body):
        return refused
    if not body.prompt:
        return await _loaded(body.model, _response_piece)
    job_input = {
        "model": body.model,
        "prompt": body.prompt,
        **_shared_input(body),
        **({"system": body.system} if body.system else {}),
    }
    call = _Call(body.model, _response_piece, settings, api_key, base_url)
    return await call.run("generate", job_input, body.stream)


@router.post("/api/chat", response_model=None, responses=STREAMED)
async def chat(
    body: ChatRequest,
    settings: SettingsDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
) -> Response:
    """Ollama's chat: NDJSON chunks of the assistant's `message`, then the stats (a `chat` job)."""
    if refused := _unsupported(body, body.messages):
        return refused
    if not body.messages:
        return await _loaded(body.model, _message_piece)
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    job_input = {"model": body.model, "messages": messages, **_shared_input(body)}
    call = _Call(body.model, _message_piece, settings, api_key, base_url)
    return await call.run("chat", job_input, body.stream)


@router.get("/api/tags", response_model=TagList, responses=ERRORS)
async def tags(_: KeyDep) -> TagList:
    """The models the live GPU workers serve, in Ollama's list shape."""
    served = await run_in_threadpool(servable_models)
    now = _now()
    return TagList(models=[TagModel(name=name, model=name, modified_at=now) for name in served])


@router.post("/api/show", response_model=ShowResponse, responses=ERRORS)
async def show(body: ShowRequest, _: KeyDep) -> Any:
    """A model's description, if a live GPU worker serves it."""
    wanted = body.model or body.name
    if not wanted:
        return error(400, "model is required")
    name = await _served_name(wanted)
    if name is None:
        return error(404, f"model '{wanted}' not found")
    # Kiln never asks a backend itself, so it has no Modelfile to show; this one says so.
    modelfile = f"# Served by Kiln's GPU workers; their backend holds the Modelfile.\nFROM {name}\n"
    return ShowResponse(modelfile=modelfile, modified_at=_now())


@dataclass(frozen=True)
class _Call:
    """One generation for one caller: submit its job, then answer as Ollama would."""

    model: str
    piece: Piece
    settings: Settings
    api_key: ApiKey
    base_url: str

    async def run(self, kind: str, job_input: dict[str, Any], stream: bool) -> Response:
        job = await calls.submit(
            kind=kind,
            job_input=job_input,
            settings=self.settings,
            api_key=self.api_key,
        )
        if stream:
            return await self._streamed(job.id)
        done = await calls.finished(job, self.settings.sync_timeout_s)
        if done is None:
            # Ollama has no "still running" answer; the job goes on and stays readable.
            url = f"{self.base_url.rstrip('/')}/v1/jobs/{job.id}"
            waited = f"{self.settings.sync_timeout_s:g}s"
            return error(504, f"still running after {waited}: follow {url}", {"Location": url})
        if done.status != JobStatus.succeeded:
            status, job_error = calls.error_status(done)
            return error(status, self._message({**job_error, "job_id": done.id}))
        result = done.result or {}
        return JSONResponse(self._final(str(result.get("response") or ""), result))

    async def _streamed(self, job_id: str) -> Response:
        """NDJSON, once the first token is there: a job that fails before any token (an unknown
        model) answers with a plain error status, as Ollama does."""
        events = calls.tokens(job_id, self.api_key)
        first = await anext(events, None)
        if first is None:  # the stream ended without a terminal event: never expected
            return error(502, f"the job's events ended early (job {job_id})")
        kind, data = first[0]
        if kind == "error":
            status = calls.STATUS_FOR_ERROR.get(data.get("code", ""), 502)
            return error(status, self._message(data))
        return StreamingResponse(self._lines(first, events), media_type=NDJSON)

    async def _lines(
        self, first: list[calls.Part], rest: AsyncIterator[list[calls.Part]]
    ) -> AsyncIterator[str]:
        """A line per token, the lines of each batch in one write."""
        yield "".join(self._line(kind, data) for kind, data in first)
        # If the client hangs up, this stops being iterated and `calls.tokens` cancels the job.
        async for parts in rest:
            yield "".join(self._line(kind, data) for kind, data in parts)

    def _line(self, kind: str, data: dict[str, Any]) -> str:
        if kind == "token":
            text = self.piece(data["delta"])
            sent = {"model": self.model, "created_at": _now(), **text, "done": False}
        elif kind == "done":
            sent = self._final("", data)
        else:  # a failure mid-stream: Ollama sends it as a line of its own
            sent = {"error": self._message(data)}
        return calls.dumps(sent) + "\n"

    def _final(self, text: str, result: dict[str, Any]) -> dict[str, Any]:
        stats = {name: result[name] for name in STATS if result.get(name) is not None}
        return {
            "model": self.model,
            "created_at": _now(),
            **self.piece(text),
            "done": True,
            "done_reason": result.get("done_reason") or "stop",
            **stats,
        }

    def _message(self, job_error: dict[str, Any]) -> str:
        if job_error.get("code") == "model_not_found":
            return f'model "{self.model}" not found, try pulling it first'
        message = job_error.get("message") or "the job failed"
        return f"{message} (job {job_error['job_id']})" if job_error.get("job_id") else message


def error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Ollama's error: `{"error": "..."}`."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def _response_piece(text: str) -> dict[str, Any]:
    return {"response": text}


def _message_piece(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


def _shared_input(body: OllamaCall) -> dict[str, Any]:
    """The job input both kinds take from an Ollama call; `format: ""` means none, as in Ollama."""
    shared: dict[str, Any] = {}
    if body.options:
        shared["options"] = body.options
    if body.format:
        shared["format"] = body.format
    return shared


def _unsupported(body: OllamaCall, messages: Sequence[OllamaMessage] = ()) -> Response | None:
    """A 400 naming the first field set that Kiln's jobs cannot carry, or None."""
    for name in UNSUPPORTED:
        if (body.model_extra or {}).get(name):
            return error(400, f"{name} is not supported by Kiln's Ollama API")
    for message in messages:
        for name in UNSUPPORTED_IN_MESSAGES:
            if (message.model_extra or {}).get(name):
                return error(400, f"messages: {name} is not supported by Kiln's Ollama API")
    return None


async def _loaded(model: str, piece: Piece) -> Response:
    """Ollama's answer to a call with nothing to generate (clients send one to preload a model):
    `done_reason: load` if a GPU worker serves the model, else not found. No job is made."""
    if await _served_name(model) is None:
        return error(404, f'model "{model}" not found, try pulling it first')
    return JSONResponse(
        {"model": model, "created_at": _now(), **piece(""), "done": True, "done_reason": "load"}
    )


async def _served_name(wanted: str) -> str | None:
    """The registry's name for `wanted`, which may omit the `:latest` tag, as in Ollama."""
    served = await run_in_threadpool(servable_models)
    return next((name for name in served if _tagged(name) == _tagged(wanted)), None)


def _tagged(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
