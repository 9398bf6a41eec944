"""`/v1/models` and `/v1/workers`: what the GPU workers can serve, from the worker registry
(the API never asks a backend itself)."""

import time

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep
from shared.registry import WorkerInfo, live_workers, servable_models
from shared.schemas import ErrorResponse

router = APIRouter(prefix="/v1", tags=["models"])

ERRORS: dict[int | str, dict[str, object]] = {401: {"model": ErrorResponse}}


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
    """The live workers: their queues and, for GPU workers, backend and models."""
    workers: list[WorkerInfo] = await run_in_threadpool(live_workers)
    return WorkerList(data=[WorkerPublic.model_validate(w, from_attributes=True) for w in workers])
