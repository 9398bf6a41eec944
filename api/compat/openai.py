"""OpenAI's `POST /v1/chat/completions` over a Kiln `chat` job, so OpenAI clients work unchanged
(`GET /v1/models` already answers in OpenAI's list shape, in `api/routes/models.py`)."""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api import calls, service
from api.deps import KeyDep, SettingsDep
from api.errors import error_response
from shared.db import open_session
from shared.exceptions import Conflict, InvalidInput
from shared.models import ApiKey, Job
from shared.schemas import ErrorResponse
from shared.states import JobStatus

router = APIRouter(tags=["openai"])

MAX_WAIT_S = 600.0
"""How long a non-streamed completion waits for its job (or KILN_SYNC_TIMEOUT_S, if longer).
Unlike `/v1/chat`, this endpoint cannot answer `202` with the job: OpenAI clients know no such
answer and expect the completion itself. 600 s is the official clients' own read time-out, after
which nobody is waiting any more; a job still running then is canceled and the answer is 504."""

STREAM_PEEK_S = 5.0
"""How long a streamed call waits for its job's first event before it answers `200`: long enough
for an idle worker to find the model missing (then the answer is a 404, as OpenAI's is), short
enough that a client behind a queue gets its headers, and pings, soon."""

NO_RETRY = {"x-should-retry": "false"}
"""OpenAI's clients retry 409 and 5xx answers unless told not to; retrying a canceled or
timed-out completion would only repeat it."""

FINISH_REASONS = {"stop", "length", "content_filter"}
"""Backend `done_reason`s that OpenAI's `finish_reason` shares; any other reads as `stop`."""

ROLES = {"developer": "system", "function": "tool"}
"""OpenAI roles that Kiln's chat jobs know by another name."""


class TextPart(BaseModel):
    """One part of a message's content; only `text` parts carry anything Kiln can use."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class Message(BaseModel):
    """One message of the conversation, as OpenAI's clients send it."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    """What a streamed answer carries besides the chunks."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    """The schema a `json_schema` response format names (its `name` and `strict` go unused)."""

    model_config = ConfigDict(extra="ignore")

    schema_: dict[str, Any] | None = Field(None, alias="schema")


class ResponseFormat(BaseModel):
    """Plain text, any JSON object, or JSON that fits a schema."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's Chat Completions request; fields Kiln has no use for (tools, logprobs, user…)
    are ignored rather than refused, as OpenAI-compatible servers commonly do."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1, description="Defaults to KILN_DEFAULT_MODEL.")
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = Field(None, ge=0, description="Deprecated by OpenAI; still read.")
    max_completion_tokens: int | None = Field(None, ge=0)
    response_format: ResponseFormat | None = None
    n: int = Field(1, ge=1, le=1, description="Kiln generates one choice.")


class AssistantMessage(BaseModel):
    """The reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """The one choice Kiln generates."""

    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    """Token counts as the backend reported them (0 when it reported none)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A finished completion in OpenAI's shape; its id is `chatcmpl-` and the Kiln job's id."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with `stream`, Server-Sent Events of"
        " `chat.completion.chunk` objects ending with `data: [DONE]`",
        "content": {"text/event-stream": {}},
    },
    **{code: {"model": ErrorResponse} for code in (401, 404, 409, 422, 502, 503, 504)},
}


@router.post(
    "/v1/chat/completions", status_code=200, response_model=ChatCompletion, responses=RESPONSES
)
async def create_chat_completion(
    body: ChatCompletionRequest, settings: SettingsDep, api_key: KeyDep
) -> Any:
    """Continue a conversation (OpenAI's Chat Completions), waited on or streamed."""
    job = await calls.submit(
        kind="chat", job_input=_job_input(body), settings=settings, api_key=api_key
    )
    model = body.model or settings.default_model
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        peek_s = min(settings.sync_timeout_s, STREAM_PEEK_S)
        return await _stream(job, api_key, model, include_usage, peek_s)
    wait_s = max(settings.sync_timeout_s, MAX_WAIT_S)
    done = await calls.finished(job, wait_s)
    if done is None:
        done = await run_in_threadpool(_give_up, job.id, api_key)
    if done is None:
        message = f"the completion did not finish within {wait_s:.0f}s and was canceled"
        return error_response(504, "timeout", message, {"job_id": job.id}, headers=NO_RETRY)
    if done.status != JobStatus.succeeded:
        return _failure(done)
    result = done.result or {}
    return ChatCompletion(
        id=_completion_id(job),
        created=_created(job),
        model=result.get("model") or model,
        choices=[
            Choice(
                message=AssistantMessage(content=result.get("response") or ""),
                finish_reason=_finish_reason(result),
            )
        ],
        usage=_usage(result),
    )


def _job_input(body: ChatCompletionRequest) -> dict[str, Any]:
    """The `chat` job's input (`shared.schemas.ChatInput`) for an OpenAI request."""
    messages = [
        {"role": ROLES.get(message.role, message.role), "content": _text(message, index)}
        for index, message in enumerate(body.messages)
    ]
    options: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
        # Ollama's name for OpenAI's limit; the openai provider turns it back into `max_tokens`.
        "num_predict": (
            body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens
        ),
    }
    job_input: dict[str, Any] = {
        "messages": messages,
        "options": {name: value for name, value in options.items() if value is not None},
    }
    if body.model is not None:
        job_input["model"] = body.model
    if (format_ := _format(body.response_format)) is not None:
        job_input["format"] = format_
    return job_input


def _text(message: Message, index: int) -> str:
    """A message's content as one string: its text parts, one paragraph each."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for number, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            field = f"messages.{index}.content.{number}"
            raise InvalidInput(
                f"{field}: only text parts are supported, not {part.type!r}",
                details=[{"field": field, "message": "only text parts are supported"}],
            )
        texts.append(part.text)
    return "\n".join(texts)


def _format(response_format: ResponseFormat | None) -> dict[str, Any] | str | None:
    """OpenAI's `response_format` as Kiln's (Ollama's) `format`: a JSON schema, or `json`."""
    if response_format is None or response_format.type == "text":
        return None
    schema = response_format.json_schema.schema_ if response_format.json_schema else None
    if response_format.type == "json_schema" and schema:
        return schema
    return "json"


async def _stream(job: Job, api_key: ApiKey, model: str, include_usage: bool, peek_s: float) -> Any:
    """The job's tokens as `chat.completion.chunk` events; a job that fails before its first
    token (an unknown model) answers with its HTTP error, as OpenAI does, if that happens
    within `peek_s`."""
    events = calls.tokens(job.id, api_key)
    first = asyncio.ensure_future(_next(events))
    await asyncio.wait({first}, timeout=peek_s)
    if first.done() and first.result()[0][0] == "error":
        await _close(events)
        done = await calls.finished(job, peek_s)
        if done is not None:
            return _failure(done)
    chunks = _chunks(job, events, first, model, include_usage)
    return EventSourceResponse(chunks, ping=15, sep="\n")


async def _next(events: AsyncIterator[list[calls.Part]]) -> list[calls.Part]:
    return await anext(events)


async def _chunks(
    job: Job,
    events: AsyncIterator[list[calls.Part]],
    first: "asyncio.Future[list[calls.Part]]",
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """A role chunk, a chunk per token, a chunk with the finish reason, the usage chunk when
    asked for, then `[DONE]`; a failure mid-stream is an `{"error"}` event (which OpenAI's
    clients raise). The chunks of a batch of tokens go out in one write. A client that hangs
    up stops `events`, which cancels the job."""
    base: dict[str, Any] = {
        "id": _completion_id(job),
        "object": "chat.completion.chunk",
        "created": _created(job),
        "model": model,
    }
    if include_usage:
        base["usage"] = None  # every chunk but the last carries a null usage, as OpenAI's do

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> ServerSentEvent:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return ServerSentEvent(data=calls.dumps({**base, "choices": [choice]}))

    def said(kind: str, data: dict[str, Any]) -> list[ServerSentEvent]:
        if kind == "token":
            return [chunk({"content": data["delta"]})]
        if kind == "done":
            sent = [chunk({}, _finish_reason(data))]
            if include_usage:
                usage = {**base, "choices": [], "usage": _usage(data).model_dump()}
                sent.append(ServerSentEvent(data=calls.dumps(usage)))
            return [*sent, ServerSentEvent(data="[DONE]")]
        error = {
            "code": data.get("code", "job_failed"),
            "message": data.get("message", "the job failed"),
            "details": {"job_id": job.id},
        }
        return [ServerSentEvent(data=calls.dumps({"error": error}))]

    try:
        yield chunk({"role": "assistant", "content": ""}).encode()
        parts = await first
        while True:
            yield b"".join(event.encode() for kind, data in parts for event in said(kind, data))
            if parts[-1][0] != "token":  # only a batch's last part can end the stream
                return
            parts = await anext(events)
    finally:
        if first.done():
            await _close(events)
        else:
            # `events` is running inside `first`: cancelling it ends `calls.tokens` there.
            first.cancel()


async def _close(events: AsyncIterator[list[calls.Part]]) -> None:
    """Stop the token stream; `calls.tokens` cancels the job if it had not ended."""
    if isinstance(events, AsyncGenerator):
        await events.aclose()


def _give_up(job_id: str, api_key: ApiKey) -> Job | None:
    """Cancel a job nobody waits for any more: None once canceled, or the job if it finished
    in the meantime."""
    with open_session() as session:
        try:
            service.cancel_job(session=session, api_key=api_key, job_id=job_id)
        except Conflict:
            return service.get_job(session=session, api_key=api_key, job_id=job_id)
    return None


def _failure(job: Job) -> JSONResponse:
    status, error = calls.error_status(job)
    headers = NO_RETRY if status == 409 else None
    return error_response(status, error["code"], error["message"], {"job_id": job.id}, headers)


def _completion_id(job: Job) -> str:
    return f"chatcmpl-{job.id}"


def _created(job: Job) -> int:
    return int(job.created_at.timestamp())


def _finish_reason(result: dict[str, Any]) -> str:
    reason = result.get("done_reason")
    return reason if reason in FINISH_REASONS else "stop"


def _usage(result: dict[str, Any]) -> Usage:
    counts = calls.usage(result)
    prompt, completion = counts["prompt_tokens"] or 0, counts["completion_tokens"] or 0
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
