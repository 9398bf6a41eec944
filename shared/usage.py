"""Token usage per API key, counted in Redis when a job succeeds: requests and tokens per UTC day
(what `GET /v1/usage` shows) and tokens per minute (what the per-key TPM limit reads)."""

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis

from shared import keys
from shared.models import Job

DAYS_KEPT = 90
"""How many days of usage Kiln keeps per key."""

WINDOW_TTL_S = 120
"""A minute's token count is read only during that minute; it lingers one more, then expires."""

REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS = "requests", "prompt_tokens", "completion_tokens"
"""The fields of a day's hash."""


@dataclass(frozen=True)
class DayUsage:
    """What one key used on one UTC day."""

    date: date
    requests: int
    prompt_tokens: int
    completion_tokens: int


def minute(at: float) -> int:
    """The minute since the epoch that `at` (a Unix time) falls in: the rate limits' window."""
    return int(at // 60)


def tokens_of(result: dict[str, Any]) -> tuple[int, int] | None:
    """The prompt and completion tokens a job's result reports, or None if it reports none.

    A result served from the cache spent no tokens, so it counts as a request with none.
    """
    counts = [result.get(name) for name in ("prompt_eval_count", "eval_count")]
    if not any(isinstance(count, int) for count in counts):
        return None
    if result.get("cached"):
        return 0, 0
    prompt, completion = (count if isinstance(count, int) else 0 for count in counts)
    return prompt, completion


def queue_job(pipe: "redis.client.Pipeline", job: Job) -> None:
    """Count a succeeded job against its key, if its result reports token counts: one request
    and its tokens on the key's day, its tokens on the key's minute (in a pipeline the caller
    executes)."""
    counts = tokens_of(job.result or {})
    if counts is None:
        return
    prompt_tokens, completion_tokens = counts
    at = time.time()
    day = keys.usage_day(job.owner_id, datetime.fromtimestamp(at, UTC).date().isoformat())
    window = keys.rate_window(job.owner_id, "tokens", minute(at))
    pipe.hincrby(day, REQUESTS, 1)
    pipe.hincrby(day, PROMPT_TOKENS, prompt_tokens)
    pipe.hincrby(day, COMPLETION_TOKENS, completion_tokens)
    pipe.expire(day, DAYS_KEPT * 86_400)
    pipe.incrby(window, prompt_tokens + completion_tokens)
    pipe.expire(window, WINDOW_TTL_S)


def read_days(client: "redis.Redis", key_id: str, days: int, today: date) -> list[DayUsage]:
    """The key's usage on each of the `days` days up to `today`, newest first (zeros included)."""
    dates = [today - timedelta(days=back) for back in range(days)]
    with client.pipeline(transaction=False) as pipe:
        for day in dates:
            pipe.hmget(
                keys.usage_day(key_id, day.isoformat()), REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS
            )
        rows = pipe.execute()
    return [
        DayUsage(day, *(int(value or 0) for value in row))
        for day, row in zip(dates, rows, strict=True)
    ]
