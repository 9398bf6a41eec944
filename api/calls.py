"""Calls that wait on or stream a job: the core under `/v1/generate`, `/v1/chat` and the
compatibility APIs (OpenAI, Ollama, …), each of which only reshapes what goes in and out."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import service
from api.errors import error_response
from api.event_stream import event_batches, wait_until_done
from shared import crud
from shared.config import Settings
from shared.db import open_session
from shared.events import EVENT_TOKEN
from shared.logs import request_id_var
from shared.models import ApiKey, Job
from shared.schemas import JobCreate, JobPublic
from shared.states import TERMINAL, JobStatus

STATUS_FOR_ERROR = {
    "model_not_found": 404,
    "invalid_output": 422,
    "canceled": 409,
    "llm_unavailable": 503,
}
"""The HTTP status a synchronous call answers when its job failed with each code (else 502)."""


async def submit(
    *,
    kind: str,
    job_input: dict[str, Any],
    settings: Settings,
    api_key: ApiKey,
) -> Job:
    """Create and queue the job (validated like `POST /v1/jobs`)."""
    job, _ = await run_in_threadpool(
        service.in_session,
        service.submit_job,
        settings=settings,
        api_key=api_key,
        body=JobCreate.model_validate({"kind": kind, "input": job_input}),
        idempotency_key=None,
        request_id=request_id_var.get(),
    )
    return job


async def finished(job: Job, timeout_s: float) -> Job | None:
    """The job once terminal, or None if it is still going after `timeout_s`."""
    if not await wait_until_done(job.id, timeout_s):
        return None
    return await run_in_threadpool(_load, job.id)


def accepted(public: JobPublic) -> JSONResponse:
    """`202` with the job and its URL as `Location`: a job taken on that goes on by itself."""
    headers = {"Location": public.urls.get}
    return JSONResponse(public.model_dump(mode="json"), status_code=202, headers=headers)


def _whole_job(public: JobPublic) -> dict[str, Any]:
    """The `details` of a failed call in Kiln's own API: the whole job."""
    return {"job": public.model_dump(mode="json")}


async def answer_when_done(
    job: Job,
    timeout_s: float,
    base_url: str,
    *,
    on_timeout: Callable[[JobPublic], JSONResponse] = accepted,
    details: Callable[[JobPublic], dict[str, Any]] = _whole_job,
) -> JobPublic | JSONResponse:
    """The finished job; its error in the one shape, with `details(job)`, if it failed; or
    `on_timeout(job)` (by default `202` with a `Location`) if it still runs after `timeout_s`."""
    done = await finished(job, timeout_s)
    public = JobPublic.from_job(done or job, base_url)
    if done is None:
        return on_timeout(public)
    if done.status == JobStatus.succeeded:
        return public
    status, error = error_status(done)
    return error_response(status, error["code"], error["message"], details(public))


def error_status(job: Job) -> tuple[int, dict[str, str]]:
    """The HTTP status and the error of a job that did not succeed."""
    error = job.error or {"code": "job_failed", "message": "the job failed"}
    return STATUS_FOR_ERROR.get(error["code"], 502), error


Part = tuple[str, dict[str, Any]]
"""`("token", {"delta"})`, or at the end `("done", <result>)` or `("error", <error>)`."""


async def tokens(job_id: str, api_key: ApiKey) -> AsyncIterator[list[Part]]:
    """The job's parts, in the batches its event stream gives them: a route writes each batch
    at once, in the framing of its format (still one event or line per token).

    A consumer that stops early (its client hung up) cancels the job, which frees its GPU.
    """
    ended = False
    try:
        async for batch in event_batches(job_id, None):
            parts: list[Part] = []
            for event in batch:
                if event.type == EVENT_TOKEN:
                    parts.append(("token", event.data))
                elif event.is_terminal:
                    ended = True
                    parts.append(_end(job_id, event.data))
            if parts:
                yield parts
    finally:
        if not ended:
            # The disconnect cancelled the caller's scope; the cancel must still happen.
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(_cancel, job_id, api_key)


def _end(job_id: str, status: dict[str, Any]) -> Part:
    result = status.get("result")
    if status["status"] == "succeeded" and result:
        return "done", result
    return "error", {**(status.get("error") or {}), "job_id": job_id}


def usage(result: dict[str, Any]) -> dict[str, Any]:
    """Token counts and duration of a finished generation."""
    return {
        "prompt_tokens": result.get("prompt_eval_count"),
        "completion_tokens": result.get("eval_count"),
        "total_duration": result.get("total_duration"),
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _load(job_id: str) -> Job:
    with open_session() as session:
        job = crud.get_job(session=session, job_id=job_id)
    assert job is not None
    return job


def _cancel(job_id: str, api_key: ApiKey) -> None:
    with open_session() as session:
        job = crud.get_job(session=session, job_id=job_id)
        if job is not None and job.status not in TERMINAL:
            service.cancel_job(session=session, api_key=api_key, job_id=job_id)
