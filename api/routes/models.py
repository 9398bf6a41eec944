"""`/v1/models` and `/v1/workers`: what the GPU workers can serve, from the worker registry
(the API never asks a backend itself); the admin pulls and deletes models (as jobs) and
switches the active model."""

import time
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api import calls, service
from api.deps import AdminDep, BaseURLDep, KeyDep, SessionDep, SettingsDep
from shared.config import Settings
from shared.logs import request_id_var
from shared.models import ApiKey, Job
from shared.registry import WorkerInfo, live_workers, servable_models
from shared.schemas import ErrorResponse, JobPublic, ModelInput

router = APIRouter(prefix="/v1", tags=["models"])

ERRORS: dict[int | str, dict[str, object]] = {401: {"model": ErrorResponse}}
ADMIN_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 502, 503)
}


class ActiveModel(BaseModel):
    """The model jobs run when they name none."""

    model: str
    builtin_model: str = Field(description="KILN_DEFAULT_MODEL, which can never be deleted.")


class ModelPublic(BaseModel):
    """A model some worker can serve, in the shape OpenAI's `/v1/models` uses."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "kiln"
    workers: list[str] = Field(description="The GPU workers that serve it.")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelPublic]


class WorkerPublic(BaseModel):
    """A live worker as its heartbeat describes it."""

    hostname: str
    queues: list[str]
    provider: str | None
    models: list[str]
    gpu_index: int | None = Field(description="The GPU it is pinned to (`kiln worker --gpus`).")
    backend_url: str | None = Field(description="Where its LLM backend listens (GPU workers).")
    state: Literal["busy", "idle"] | None = Field(description="GPU workers: busy or idle.")
    job_id: str | None = Field(description="The job a busy GPU worker runs now.")


class WorkerList(BaseModel):
    data: list[WorkerPublic]


@router.get("/models", response_model=ModelList, responses=ERRORS)
async def list_models(_: KeyDep) -> ModelList:
    """The models the live GPU workers can serve (OpenAI's list shape)."""
    served = await run_in_threadpool(servable_models)
    now = int(time.time())
    return ModelList(
        data=[
            ModelPublic(id=name, created=now, workers=hosts)
            for name, hosts in sorted(served.items())
        ]
    )


@router.get("/workers", response_model=WorkerList, responses=ERRORS)
async def list_workers(_: KeyDep) -> WorkerList:
    """The live workers: their queues and, for GPU workers, GPU, backend, models and job."""
    workers: list[WorkerInfo] = await run_in_threadpool(live_workers)
    return WorkerList(data=[WorkerPublic.model_validate(w, from_attributes=True) for w in workers])


@router.post("/models/pull", status_code=202, response_model=JobPublic, responses=ADMIN_ERRORS)
async def pull_model(
    body: ModelInput, settings: SettingsDep, api_key: AdminDep, base_url: BaseURLDep
) -> JSONResponse:
    """Pull a model into the GPU workers' backends: a `model_pull` job, whose progress events
    follow the download (admin only)."""
    job = await _submit(settings, api_key, "model_pull", body.model)
    return calls.accepted(JobPublic.from_job(job, base_url))


@router.get("/models/active", response_model=ActiveModel, responses=ERRORS)
def get_active_model(session: SessionDep, settings: SettingsDep, _: KeyDep) -> ActiveModel:
    """The model jobs run when they name none."""
    model = service.active_model(session=session, settings=settings)
    return ActiveModel(model=model, builtin_model=settings.default_model)


@router.put("/models/active", response_model=ActiveModel, responses=ADMIN_ERRORS)
def switch_model(
    body: ModelInput, session: SessionDep, settings: SettingsDep, _: AdminDep
) -> ActiveModel:
    """Make a model some GPU worker serves the active one, kept across restarts (admin only)."""
    model = service.switch_model(session=session, model=body.model)
    return ActiveModel(model=model, builtin_model=settings.default_model)


@router.delete("/models/{name:path}", response_model=JobPublic, responses=ADMIN_ERRORS)
async def delete_model(
    name: str, settings: SettingsDep, api_key: AdminDep, base_url: BaseURLDep
) -> Any:
    """Delete a model from the GPU workers' backends: the finished `model_delete` job; `409` for
    the built-in or the active model (admin only)."""
    job = await _submit(settings, api_key, "model_delete", name)
    return await calls.answer_when_done(job, settings.sync_timeout_s, base_url)


async def _submit(
    settings: Settings, api_key: ApiKey, kind: Literal["model_pull", "model_delete"], model: str
) -> Job:
    """Queue a pull or delete of `model` from a thread, as the database session blocks."""
    return await run_in_threadpool(
        service.in_session,
        service.submit_model_job,
        settings=settings,
        api_key=api_key,
        kind=kind,
        model=model,
        request_id=request_id_var.get(),
    )
