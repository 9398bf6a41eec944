"""`/v1/compose`: a `compose` job the caller waits on, like `/v1/generate` (up to
KILN_SYNC_TIMEOUT_S, then `202` with the job)."""

from typing import Any

from fastapi import APIRouter

from api import calls
from api.deps import BaseURLDep, KeyDep, SettingsDep
from shared.schemas import ComposeInput, ErrorResponse, JobPublic

router = APIRouter(prefix="/v1", tags=["compose"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobPublic, "description": "Still running: follow the job's URLs"},
    **{code: {"model": ErrorResponse} for code in (401, 404, 422, 502, 503)},
}


@router.post("/compose", response_model=JobPublic, responses=RESPONSES)
async def compose(
    body: ComposeInput, settings: SettingsDep, api_key: KeyDep, base_url: BaseURLDep
) -> Any:
    """Write a validated docker compose file for the services: the finished job, whose result
    holds `compose_yaml`, `services` and `warnings`."""
    job_input = body.model_dump(mode="json", exclude_unset=True)
    job = await calls.submit(
        kind="compose", job_input=job_input, settings=settings, api_key=api_key
    )
    return await calls.answer_when_done(job, settings.sync_timeout_s, base_url)
