"""`/v1/generate` and `/v1/chat`: a job the caller waits on (up to KILN_SYNC_TIMEOUT_S, then
`202` with the job, as `Prefer: wait` works at Replicate) or streams token by token."""

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api import service
from api.deps import BaseURLDep, KeyDep, SessionDep, SettingsDep
from api.errors import error_response
from api.event_stream import events_of, wait_until_done
from shared.crud import get_job
from shared.db import open_session
from shared.events import EVENT_TOKEN
from shared.logs import request_id_var
from shared.models import ApiKey, Job
from shared.schemas import ChatCall, ErrorResponse, GenerateCall, JobCreate, JobPublic
from shared.states import TERMINAL, JobStatus

router = APIRouter(prefix="/v1", tags=["generation"])

STATUS_FOR_ERROR = {
    "model_not_found": 404,
    "invalid_output": 422,
    "canceled": 409,
    "llm_unavailable": 503,
}
"""The HTTP status a synchronous call answers when its job failed with each code (else 502)."""

RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobPublic, "description": "Still running: follow the job's URLs"},
    **{code: {"model": ErrorResponse} for code in (401, 404, 409, 422, 502, 503)},
}


@router.post("/generate", response_model=JobPublic, responses=RESPONSES)
async def generate(
    body: GenerateCall,
    session: SessionDep,
    settings: SettingsDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
) -> Any:
    """Complete a prompt: the finished job (with `stream`, Server-Sent Events of its tokens)."""
    job_input = body.model_dump(mode="json", exclude={"stream"}, exclude_unset=True)
    return await _call("generate", job_input, body.stream, session, settings, api_key, base_url)


@router.post("/chat", response_model=JobPublic, responses=RESPONSES)
async def chat(
    body: ChatCall,
    session: SessionDep,
    settings: SettingsDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
) -> Any:
    """Continue a conversation: the finished job (with `stream`, Server-Sent Events)."""
    job_input = body.model_dump(mode="json", exclude={"stream"}, exclude_unset=True)
    return await _call("chat", job_input, body.stream, session, settings, api_key, base_url)


async def _call(
    kind: str,
    job_input: dict[str, Any],
    stream: bool,
    session: SessionDep,
    settings: SettingsDep,
    api_key: ApiKey,
    base_url: str,
) -> Any:
    job, _ = await run_in_threadpool(
        service.submit_job,
        session=session,
        settings=settings,
        api_key=api_key,
        body=JobCreate.model_validate({"kind": kind, "input": job_input}),
        idempotency_key=None,
        request_id=request_id_var.get(),
    )
    if stream:
        return EventSourceResponse(_tokens(job.id, api_key), ping=15)
    if not await wait_until_done(job.id, settings.sync_timeout_s):
        public = JobPublic.from_job(job, base_url)
        headers = {"Location": public.urls.get}
        return JSONResponse(public.model_dump(mode="json"), status_code=202, headers=headers)
    finished = await run_in_threadpool(_load, job.id)
    return _answer(finished, base_url)


def _load(job_id: str) -> Job:
    with open_session() as session:
        job = get_job(session=session, job_id=job_id)
    assert job is not None
    return job


def _answer(job: Job, base_url: str) -> Any:
    public = JobPublic.from_job(job, base_url)
    if job.status == JobStatus.succeeded:
        return public
    error = job.error or {"code": "job_failed", "message": "the job failed"}
    status = STATUS_FOR_ERROR.get(error["code"], 502)
    return error_response(
        status, error["code"], error["message"], {"job": public.model_dump(mode="json")}
    )


async def _tokens(job_id: str, api_key: ApiKey) -> AsyncIterator[ServerSentEvent]:
    """Token deltas, then `done` (the result and its usage) or `error`; a client that goes away
    cancels the job, so the GPU is free again at once."""
    finished = False
    try:
        async for event in events_of(job_id, None):
            if event.type == EVENT_TOKEN:
                yield ServerSentEvent(data=event.to_json(), event="token")
            elif event.is_terminal:
                finished = True
                yield _final(job_id, event.data)
    finally:
        if not finished:
            # The disconnect cancelled this generator's scope; the cancel must still happen.
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(_cancel, job_id, api_key)


def _final(job_id: str, data: dict[str, Any]) -> ServerSentEvent:
    result = data.get("result")
    if data["status"] != JobStatus.succeeded or not result:
        error = {**(data.get("error") or {}), "job_id": job_id}
        return ServerSentEvent(data=json.dumps(error), event="error")
    usage = {
        "prompt_tokens": result.get("prompt_eval_count"),
        "completion_tokens": result.get("eval_count"),
        "total_duration": result.get("total_duration"),
    }
    done = {"job_id": job_id, **{k: result.get(k) for k in ("model", "provider", "response")}}
    return ServerSentEvent(data=json.dumps({**done, "usage": usage}), event="done")


def _cancel(job_id: str, api_key: ApiKey) -> None:
    with open_session() as session:
        job = get_job(session=session, job_id=job_id)
        if job is not None and job.status not in TERMINAL:
            service.cancel_job(session=session, api_key=api_key, job_id=job_id)
