"""`/v1/generate` and `/v1/chat`: a job the caller waits on (up to KILN_SYNC_TIMEOUT_S, then
`202` with the job, as `Prefer: wait` works at Replicate) or streams token by token."""

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import calls
from api.deps import BaseURLDep, KeyDep, SettingsDep
from shared.models import ApiKey
from shared.schemas import ChatCall, ErrorResponse, GenerateCall, JobPublic

router = APIRouter(prefix="/v1", tags=["generation"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "The finished job, or with `stream`: its tokens as Server-Sent Events",
    },
    202: {"model": JobPublic, "description": "Still running: follow the job's URLs"},
    **{code: {"model": ErrorResponse} for code in (401, 404, 409, 422, 502, 503)},
}


@router.post("/generate", response_model=JobPublic, responses=RESPONSES)
async def generate(
    body: GenerateCall,
    settings: SettingsDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
) -> Any:
    """Complete a prompt: the finished job (with `stream`, Server-Sent Events of its tokens)."""
    job_input = body.model_dump(mode="json", exclude={"stream"}, exclude_unset=True)
    return await _call("generate", job_input, body.stream, settings, api_key, base_url)


@router.post("/chat", response_model=JobPublic, responses=RESPONSES)
async def chat(
    body: ChatCall,
    settings: SettingsDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
) -> Any:
    """Continue a conversation: the finished job (with `stream`, Server-Sent Events)."""
    job_input = body.model_dump(mode="json", exclude={"stream"}, exclude_unset=True)
    return await _call("chat", job_input, body.stream, settings, api_key, base_url)


async def _call(
    kind: str,
    job_input: dict[str, Any],
    stream: bool,
    settings: SettingsDep,
    api_key: ApiKey,
    base_url: str,
) -> Any:
    job = await calls.submit(kind=kind, job_input=job_input, settings=settings, api_key=api_key)
    if stream:
        return EventSourceResponse(_events(job.id, api_key), ping=15)
    return await calls.answer_when_done(job, settings.sync_timeout_s, base_url)


async def _events(job_id: str, api_key: ApiKey) -> AsyncIterator[bytes]:
    """`token` events, then `done` (response and usage) or `error`."""
    async for parts in calls.tokens(job_id, api_key):
        yield b"".join(_event(job_id, kind, data).encode() for kind, data in parts)


def _event(job_id: str, kind: str, data: dict[str, Any]) -> ServerSentEvent:
    sent = data
    if kind == "done":
        fields = {k: data.get(k) for k in ("model", "provider", "response", "cached")}
        sent = {"job_id": job_id, **fields, "usage": calls.usage(data)}
    return ServerSentEvent(data=calls.dumps(sent), event=kind)
