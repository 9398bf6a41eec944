"""App briefs: `POST /api-endpoint` (the task format's own path) and its alias `POST /v1/tasks`."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from api import service
from api.deps import SessionDep, SettingsDep
from shared.logs import request_id_var
from shared.schemas import ErrorResponse, TaskAccepted, TaskBrief

router = APIRouter(tags=["app builds"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 403, 413, 422)
}
BRIEF_SCHEMA = {
    "requestBody": {"content": {"application/json": {"schema": TaskBrief.model_json_schema()}}}
}


def accept_brief(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    body: Annotated[dict[str, Any], Body()],
) -> TaskAccepted:
    """Accept an app brief and build it in the background: answers at once with the job id.
    A wrong `secret` is refused with 403 before anything is read or stored; a repeated
    (task, round, nonce) returns the job already made for it."""
    job, _ = service.submit_brief(
        session=session, settings=settings, body=body, request_id=request_id_var.get()
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return TaskAccepted(
        status="accepted", job_id=job.id, task=job.input["task"], round=job.input["round"]
    )


BRIEF_PATHS = ("/api-endpoint", "/v1/tasks")

for path in BRIEF_PATHS:
    router.add_api_route(
        path,
        accept_brief,
        methods=["POST"],
        status_code=200,
        response_model=TaskAccepted,
        responses=RESPONSES,
        openapi_extra=BRIEF_SCHEMA,
    )
