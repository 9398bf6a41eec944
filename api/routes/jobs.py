"""`/v1/jobs`: submit, read, list, cancel and follow jobs."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api import service
from api.deps import BaseURLDep, KeyDep, SessionDep, SettingsDep
from api.event_stream import job_events
from shared.logs import request_id_var
from shared.schemas import AnyJobKind, ErrorResponse, JobCreate, JobList, JobPublic
from shared.states import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 422)
}


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={200: {"model": JobPublic, "description": "Replayed idempotent request"}, **ERRORS},
)
async def submit_job(
    body: JobCreate,
    response: Response,
    settings: SettingsDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    """Create a job and queue it; answers at once (a repeated Idempotency-Key replays it)."""
    job, created = await run_in_threadpool(
        service.in_session,
        service.submit_job,
        settings=settings,
        api_key=api_key,
        body=body,
        idempotency_key=idempotency_key,
        request_id=request_id_var.get(),
    )
    public = JobPublic.from_job(job, base_url)
    response.status_code = 202 if created else 200
    response.headers["Location"] = public.urls.get
    return public


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(
    session: SessionDep,
    api_key: KeyDep,
    base_url: BaseURLDep,
    status: JobStatus | None = None,
    kind: AnyJobKind | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """The caller's jobs, newest first; pass `next_cursor` as `cursor` for the next page."""
    jobs, has_more = service.list_jobs(
        session=session, api_key=api_key, status=status, kind=kind, cursor=cursor, limit=limit
    )
    return JobList(
        data=[JobPublic.from_job(job, base_url) for job in jobs],
        has_more=has_more,
        next_cursor=jobs[-1].id if has_more else None,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def get_job(job_id: str, session: SessionDep, api_key: KeyDep, base_url: BaseURLDep) -> JobPublic:
    """One job with its status, result or error (an app build's result also shows how its
    evaluation callback is going)."""
    job = service.get_job(session=session, api_key=api_key, job_id=job_id)
    public = JobPublic.from_job(job, base_url)
    if public.result and isinstance(notify := public.result.get("notify"), dict):
        progress = service.notify_progress(session=session, delivery_id=notify["delivery_id"])
        public.result = {**public.result, "notify": {**notify, **progress}}
    return public


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={409: {"model": ErrorResponse}, **ERRORS},
)
def cancel_job(
    job_id: str, session: SessionDep, api_key: KeyDep, base_url: BaseURLDep
) -> JobPublic:
    """Cancel a queued or running job; a finished job answers 409."""
    job = service.cancel_job(session=session, api_key=api_key, job_id=job_id)
    return JobPublic.from_job(job, base_url)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
)
async def stream_job_events(
    job_id: str,
    api_key: KeyDep,
    last_event_id: Annotated[str | None, Header(pattern=r"^\d+-\d+$")] = None,
) -> EventSourceResponse:
    """The job's events as Server-Sent Events, from the start or after `Last-Event-ID`; the
    stream closes after the terminal status event."""
    await run_in_threadpool(service.in_session, service.get_job, api_key=api_key, job_id=job_id)
    return EventSourceResponse(job_events(job_id, last_event_id), ping=15)
