"""What the small compatibility APIs (private LLM server, MLOps backend, gateway) share: a
generation's waited-on result or its error in Kiln's shape, and its tokens as `data:` events."""

import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import calls
from api.errors import error_response
from shared.config import Settings
from shared.models import ApiKey, Job
from shared.schemas import JobPublic

Piece = Callable[[str], dict[str, Any]]
"""Wraps a token the way a format's events carry it: `{"response": ...}`, `{"text": ...}`."""


async def waited(job: Job, settings: Settings, base_url: str) -> dict[str, Any] | JSONResponse:
    """The job's result once it succeeded; else the answer instead: `504` with the job's URL
    if it still runs after KILN_SYNC_TIMEOUT_S (it goes on), or the job's error status."""
    timeout_s = settings.sync_timeout_s
    answer = await calls.answer_when_done(
        job, timeout_s, base_url, on_timeout=partial(_timed_out, timeout_s), details=_job_id
    )
    return answer if isinstance(answer, JSONResponse) else answer.result or {}


def _timed_out(timeout_s: float, public: JobPublic) -> JSONResponse:
    url = public.urls.get
    message = f"still running after {timeout_s:g}s: follow {url}"
    return error_response(504, "timeout", message, _job_id(public), {"Location": url})


def _job_id(public: JobPublic) -> dict[str, Any]:
    """The `details` of a compatibility API's error: the job's id, not the whole job."""
    return {"job_id": public.id}


def streamed(
    job_id: str, api_key: ApiKey, piece: Piece, end: dict[str, Any]
) -> EventSourceResponse:
    """`data: <piece>` per token, then `data: <end>`; a failure is `data: {"error": {...}}`
    in Kiln's error shape. A client that hangs up cancels the job."""
    return EventSourceResponse(_events(job_id, api_key, piece, end), ping=15, sep="\n")


async def _events(
    job_id: str, api_key: ApiKey, piece: Piece, end: dict[str, Any]
) -> AsyncIterator[bytes]:
    async for parts in calls.tokens(job_id, api_key):
        yield b"".join(_event(job_id, piece, end, kind, data).encode() for kind, data in parts)


def _event(
    job_id: str, piece: Piece, end: dict[str, Any], kind: str, data: dict[str, Any]
) -> ServerSentEvent:
    if kind == "token":
        sent = piece(data["delta"])
    elif kind == "done":
        sent = end
    else:
        sent = {
            "error": {
                "code": data.get("code", "job_failed"),
                "message": data.get("message", "the job failed"),
                "details": {"job_id": job_id},
            }
        }
    # json.dumps's default spacing and bare `\n` line ends, as the formats' servers send.
    return ServerSentEvent(data=json.dumps(sent), sep="\n")
