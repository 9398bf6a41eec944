"""The MLOps backend's API over Kiln: `/health`, `/api/llm/health`, `/api/llm/models`, and
`/api/llm/generate` (one object with Ollama's stats) and `/api/llm/stream` (`data: {"text"}`
events ending with `data: {"done": true}`) over `generate` jobs. Its clients send `X-API-Key`,
which takes a Kiln key; the two health checks are open, as they are there."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import calls
from api.compat import answers
from api.deps import BaseURLDep, KeyDep, SettingsDep
from api.errors import error_response
from shared.registry import servable_models
from shared.schemas import ErrorResponse

router = APIRouter(tags=["MLOps backend"])

END = {"done": True}
"""The event that ends a stream: `data: {"done": true}`."""

STATS = ("total_duration", "load_duration", "prompt_eval_count", "eval_count")
"""The counts and durations (nanoseconds) a whole completion carries, as Ollama names them."""


class LLMRequest(BaseModel):
    """What `/api/llm/generate` and `/api/llm/stream` take; `stream` is implied by the path."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1, description="Defaults to Kiln's model.")
    prompt: str = Field(min_length=1)
    stream: bool = False


class GenerateResponse(BaseModel):
    """A whole completion, with the counts and durations (nanoseconds) Ollama reports."""

    model: str
    response: str
    done: bool = True
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None


class ModelInfo(BaseModel):
    """One model; Kiln's registry knows names only, so size and digest stay empty."""

    name: str
    modified_at: str
    size: int = 0
    digest: str = ""


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class LLMHealth(BaseModel):
    """The LLM service is up when a live GPU worker serves a model."""

    status: str
    models: int


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 422, 429, 502, 503, 504)
}


@router.get("/health", response_model=Health)
async def health() -> Health:
    """The application is up."""
    return Health(status="healthy")


@router.get("/api/llm/health", response_model=LLMHealth, responses={503: {"model": ErrorResponse}})
async def llm_health() -> Any:
    """The LLM service answers: a live GPU worker serves at least one model."""
    served = await run_in_threadpool(servable_models)
    if not served:
        return error_response(503, "llm_unavailable", "no live GPU worker serves a model")
    return LLMHealth(status="healthy", models=len(served))


@router.get("/api/llm/models", response_model=ModelList, responses=ERRORS)
async def models(_: KeyDep) -> ModelList:
    """The models the live GPU workers serve."""
    served = await run_in_threadpool(servable_models)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return ModelList(models=[ModelInfo(name=name, modified_at=now) for name in sorted(served)])


@router.post("/api/llm/generate", response_model=GenerateResponse, responses=ERRORS)
async def generate(
    body: LLMRequest, settings: SettingsDep, api_key: KeyDep, base_url: BaseURLDep
) -> Any:
    """Generate text and answer it whole, with the backend's stats."""
    job = await calls.submit(
        kind="generate", job_input=_job_input(body), settings=settings, api_key=api_key
    )
    result = await answers.waited(job, settings, base_url)
    if isinstance(result, JSONResponse):
        return result
    return GenerateResponse(
        model=body.model or str(result.get("model") or settings.default_model),
        response=str(result.get("response") or ""),
        **{name: result.get(name) for name in STATS},
    )


@router.post(
    "/api/llm/stream",
    response_model=None,
    responses={
        200: {
            "description": 'Events `data: {"text": ...}` ending with `data: {"done": true}`',
            "content": {"text/event-stream": {}},
        },
        **ERRORS,
    },
)
async def stream(body: LLMRequest, settings: SettingsDep, api_key: KeyDep) -> Any:
    """Generate text as Server-Sent Events, a piece at a time."""
    job = await calls.submit(
        kind="generate", job_input=_job_input(body), settings=settings, api_key=api_key
    )
    return answers.streamed(job.id, api_key, _piece, END)


def _job_input(body: LLMRequest) -> dict[str, Any]:
    return {"prompt": body.prompt, **({"model": body.model} if body.model else {})}


def _piece(text: str) -> dict[str, Any]:
    return {"text": text}
