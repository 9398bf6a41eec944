"""The LLM gateway's API over Kiln: `POST /completion` `{"prompt"}` → `{"completion"}` (a
`generate` job), and `GET /history`, the key's completions with their request id and latency.

The history is a capped Redis list per key, written when a completion is answered: it is a log
of what this endpoint answered (as the gateway's history file was), not a record of the jobs,
which stay in the database.
"""

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import calls
from api.compat import answers
from api.deps import BaseURLDep, KeyDep, SettingsDep
from shared import keys
from shared.broker import get_redis
from shared.logs import request_id_var
from shared.schemas import ErrorResponse

router = APIRouter(tags=["gateway"])

HISTORY_LENGTH = 100
"""Completions kept per key; older ones drop off."""

HISTORY_TTL_S = 30 * 86_400
"""A key's history expires after 30 days without a completion."""


class CompletionRequest(BaseModel):
    """The gateway's request: just a prompt."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, pattern=r"\S", description="The prompt; not blank.")


class Completion(BaseModel):
    """The completion, with the request id (also in `X-Request-ID`) and the latency."""

    completion: str
    request_id: str | None
    latency_ms: int


class HistoryEntry(BaseModel):
    """One answered completion."""

    request_id: str | None
    job_id: str
    prompt: str
    completion: str
    latency_ms: int
    timestamp: str


class History(BaseModel):
    """The key's completions, newest first."""

    history: list[HistoryEntry]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 422, 429, 502, 503, 504)
}


@router.post("/completion", response_model=Completion, responses=ERRORS)
async def completion(
    body: CompletionRequest, settings: SettingsDep, api_key: KeyDep, base_url: BaseURLDep
) -> Any:
    """Complete a prompt with Kiln's default model."""
    started = time.monotonic()
    job = await calls.submit(
        kind="generate", job_input={"prompt": body.prompt}, settings=settings, api_key=api_key
    )
    result = await answers.waited(job, settings, base_url)
    if isinstance(result, JSONResponse):
        return result
    entry = HistoryEntry(
        request_id=request_id_var.get(),
        job_id=job.id,
        prompt=body.prompt,
        completion=str(result.get("response") or ""),
        latency_ms=round((time.monotonic() - started) * 1000),
        timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    )
    await run_in_threadpool(_remember, api_key.id, entry)
    return Completion(
        completion=entry.completion, request_id=entry.request_id, latency_ms=entry.latency_ms
    )


@router.get("/history", response_model=History, responses=ERRORS)
async def history(
    api_key: KeyDep,
    limit: Annotated[int, Query(ge=1, le=HISTORY_LENGTH)] = HISTORY_LENGTH,
) -> History:
    """This key's completions, newest first."""
    raw = await run_in_threadpool(
        get_redis().lrange, keys.gateway_history(api_key.id), 0, limit - 1
    )
    return History(history=[HistoryEntry.model_validate_json(item) for item in raw])


def _remember(key_id: str, entry: HistoryEntry) -> None:
    name = keys.gateway_history(key_id)
    with get_redis().pipeline() as pipe:
        pipe.lpush(name, json.dumps(entry.model_dump()))
        pipe.ltrim(name, 0, HISTORY_LENGTH - 1)
        pipe.expire(name, HISTORY_TTL_S)
        pipe.execute()
