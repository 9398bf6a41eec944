"""The jobs pages: the list at `/`, a job's detail with its live events, sign-in and sign-out.

A key sees the same jobs here as through the API: its own, and the admin key everyone's.
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Form, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from api import service
from api.deps import SessionDep, SettingsDep, active_key
from api.event_stream import job_events
from api.pages.auth import PageKeyDep, require_same_origin, sign_in, sign_out
from shared.exceptions import Unauthorized
from shared.models import Job
from shared.schemas import AnyJobKind
from shared.states import TERMINAL, JobStatus

HERE = Path(__file__).resolve().parent
STATIC_PATH = "/static"
PAGE_SIZE = 50
KINDS = get_args(AnyJobKind)

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


def static_files() -> StaticFiles:
    """The pages' stylesheet and script."""
    return StaticFiles(directory=HERE / "static")


def duration(job: Job) -> str:
    """How long the job ran (finished minus started), or empty while it has not finished."""
    if job.started_at is None or job.finished_at is None:
        return ""
    seconds = (job.finished_at - job.started_at).total_seconds()
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s"


def moment(value: datetime | None) -> str:
    """A timestamp as the pages show it, in UTC."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def pretty(value: Any) -> str:
    """JSON indented for reading."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


templates.env.filters.update(duration=duration, moment=moment, pretty=pretty)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


@router.get("/", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    session: SessionDep,
    api_key: PageKeyDep,
    status: JobStatus | Literal[""] = "",
    kind: AnyJobKind | Literal[""] = "",
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Recent jobs with their kind, status, duration and webhook state, filtered."""
    if api_key is None:
        return _to_login()
    jobs, has_more = service.list_jobs(
        session=session,
        api_key=api_key,
        status=status or None,
        kind=kind or None,
        cursor=cursor,
        limit=PAGE_SIZE,
    )
    webhooks = service.webhook_states(session=session, job_ids=[job.id for job in jobs])
    return templates.TemplateResponse(
        request,
        "jobs.html",
        {
            "api_key": api_key,
            "jobs": jobs,
            "webhooks": webhooks,
            "status": status,
            "kind": kind,
            "statuses": list(JobStatus),
            "kinds": KINDS,
            "next_cursor": jobs[-1].id if has_more else None,
        },
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SessionDep, api_key: PageKeyDep) -> Response:
    """One job: its fields, input, result or error, webhook deliveries and live events."""
    if api_key is None:
        return _to_login()
    job = service.get_job(session=session, api_key=api_key, job_id=job_id)
    deliveries, _ = service.list_deliveries(session=session, api_key=api_key, job_id=job_id)
    return templates.TemplateResponse(
        request,
        "job.html",
        {
            "api_key": api_key,
            "job": job,
            "deliveries": deliveries,
            "finished": job.status in TERMINAL,
        },
    )


@router.get("/jobs/{job_id}/events")
async def job_page_events(
    job_id: str,
    api_key: PageKeyDep,
    last_event_id: Annotated[str | None, Header(pattern=r"^\d+-\d+$")] = None,
) -> EventSourceResponse:
    """The job's events for the detail page (a browser's EventSource sends only cookies)."""
    if api_key is None:
        raise Unauthorized("sign in first")
    await run_in_threadpool(service.in_session, service.get_job, api_key=api_key, job_id=job_id)
    return EventSourceResponse(job_events(job_id, last_event_id), ping=15)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, failed: bool = False) -> Response:
    """The sign-in form."""
    return templates.TemplateResponse(request, "login.html", {"failed": failed})


@router.post("/login")
def log_in(
    request: Request, settings: SettingsDep, key: Annotated[str, Form(max_length=256)]
) -> Response:
    """Check the key and keep it in the cookie; a wrong key goes back to the form."""
    require_same_origin(request, settings)
    if active_key(key.strip()) is None:
        return RedirectResponse("/login?failed=true", status_code=303)
    response = RedirectResponse("/", status_code=303)
    sign_in(response, request, settings, key.strip())
    return response


@router.post("/logout")
def log_out(request: Request, settings: SettingsDep) -> Response:
    """Forget the key."""
    require_same_origin(request, settings)
    response = _to_login()
    sign_out(response, request, settings)
    return response
