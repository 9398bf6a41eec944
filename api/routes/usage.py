"""`GET /v1/usage`: a key's requests and tokens per UTC day, and the limits it runs under."""

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, SettingsDep
from shared import usage
from shared.broker import get_redis
from shared.exceptions import Forbidden
from shared.schemas import ErrorResponse

router = APIRouter(prefix="/v1", tags=["usage"])


class DayUsage(BaseModel):
    """What the key used on one UTC day: succeeded generations and their tokens."""

    date: date
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Limits(BaseModel):
    """The key's per-minute limits; 0 is unlimited."""

    requests_per_minute: int
    tokens_per_minute: int


class Usage(BaseModel):
    """A key's usage, newest day first."""

    key_id: str
    days: list[DayUsage]
    limits: Limits


@router.get(
    "/usage",
    response_model=Usage,
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}},
)
async def read_usage(
    api_key: KeyDep,
    settings: SettingsDep,
    days: Annotated[int, Query(ge=1, le=usage.DAYS_KEPT, description="How many days back.")] = 7,
    key_id: Annotated[str | None, Query(description="Another key's (admin only).")] = None,
) -> Usage:
    """The key's requests and tokens per UTC day, today first."""
    if key_id is not None and key_id != api_key.id and not api_key.is_admin:
        raise Forbidden("only the admin key may read another key's usage")
    counted_key = key_id or api_key.id
    today = datetime.now(UTC).date()
    rows = await run_in_threadpool(usage.read_days, get_redis(), counted_key, days, today)
    return Usage(
        key_id=counted_key,
        days=[
            DayUsage(
                date=row.date,
                requests=row.requests,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                total_tokens=row.prompt_tokens + row.completion_tokens,
            )
            for row in rows
        ],
        limits=Limits(
            requests_per_minute=settings.rate_limit_rpm,
            tokens_per_minute=settings.rate_limit_tpm,
        ),
    )
