"""What a key may submit: prompts up to KILN_MAX_PROMPT_CHARS, and per-key requests and tokens
per minute (KILN_RATE_LIMIT_RPM, KILN_RATE_LIMIT_TPM) in fixed one-minute windows in Redis.

Tokens are limited on recorded usage: a job's tokens count in the minute it finishes (see
`shared.usage`), and a key whose tokens this minute reached the limit is refused until the
minute ends. Nothing is estimated before a job runs, so the job that crosses the limit still
completes; the ones after it wait.
"""

import logging
import math
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.errors import error_response
from shared import keys, usage
from shared.broker import get_redis
from shared.config import Settings
from shared.exceptions import InvalidInput, KilnError
from shared.models import ApiKey

log = logging.getLogger(__name__)

_ADMIT = """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= tpm then return 'tokens' end
if rpm > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= rpm then return 'requests' end
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return false
"""
"""Refuses a request when the minute's tokens or requests are used up, else counts it; one
script, so concurrent requests cannot both take the last slot (a refused one is not counted)."""


class RateLimited(KilnError):
    """A key used up its requests or tokens for this minute."""

    code = "rate_limited"
    status_code = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, details={"retry_after_s": retry_after_s})
        self.headers = {"Retry-After": str(retry_after_s)}


def prompt_chars(kind: str, job_input: dict[str, Any]) -> int:
    """How long a job's prompt is: a `generate` job's prompt and system, a `chat` job's
    message contents together (other kinds carry no prompt)."""
    if kind == "generate":
        return len(job_input.get("prompt") or "") + len(job_input.get("system") or "")
    if kind == "chat":
        return sum(len(message.get("content") or "") for message in job_input.get("messages", []))
    return 0


def check_prompt(kind: str, job_input: dict[str, Any], settings: Settings) -> None:
    """A 422 if the job's prompt is longer than KILN_MAX_PROMPT_CHARS."""
    length = prompt_chars(kind, job_input)
    if length > settings.max_prompt_chars:
        field = "input.messages" if kind == "chat" else "input.prompt"
        message = f"the prompt has {length} characters; at most {settings.max_prompt_chars}"
        raise InvalidInput(
            f"{field}: {message}",
            code="prompt_too_long",
            details=[{"field": field, "message": message}],
        )


def admit(*, settings: Settings, api_key: ApiKey, now: float | None = None) -> None:
    """Count one request against the key's minute, or raise `RateLimited` if it is used up.

    Limits protect the backend but are not the job's record: if Redis fails, the request
    goes through (its job is in the database and the reconciler publishes it).
    """
    rpm, tpm = settings.rate_limit_rpm, settings.rate_limit_tpm
    if not rpm and not tpm:
        return
    now = time.time() if now is None else now
    window = usage.minute(now)
    names = [keys.rate_window(api_key.id, measure, window) for measure in ("requests", "tokens")]
    try:
        used_up = get_redis().eval(_ADMIT, 2, *names, rpm, tpm, usage.WINDOW_TTL_S)
    except RedisError:
        log.warning(
            "could not check the rate limits of key %s; letting the request through", api_key.id
        )
        return
    if used_up:
        measure = used_up.decode() if isinstance(used_up, bytes) else str(used_up)
        limit = rpm if measure == "requests" else tpm
        retry_after_s = max(1, math.ceil((window + 1) * 60 - now))
        raise RateLimited(
            f"this key used its {limit} {measure} per minute; retry in {retry_after_s}s",
            retry_after_s=retry_after_s,
        )


async def rate_limited_response(_: Request, exc: Exception) -> JSONResponse:
    """The 429 in the one error shape, with `Retry-After`."""
    assert isinstance(exc, RateLimited)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


_blocked: dict[str, float] = {}
"""Client addresses this process refuses until a time (epoch seconds): kept in memory so that
a valid key pays no Redis round trip; the failures themselves are counted in Redis, across
every API process."""
MAX_BLOCKED = 10_000  # addresses remembered before expired ones are forgotten


def refuse_guessing(*, client: str, now: float | None = None) -> None:
    """A 429 for a client address that sent too many invalid keys this minute, before its key
    is even looked at: guessing costs a minute per KILN_AUTH_FAILURES_PER_MINUTE tries."""
    now = time.time() if now is None else now
    if (until := _blocked.get(client)) is not None and until > now:
        retry_after_s = max(1, math.ceil(until - now))
        raise RateLimited(
            f"too many invalid API keys from this address; retry in {retry_after_s}s",
            retry_after_s=retry_after_s,
        )


def count_bad_key(*, settings: Settings, client: str, now: float | None = None) -> None:
    """Count one invalid key from a client address; at the limit, block the address until
    the minute ends."""
    if not settings.auth_failures_per_minute:
        return
    now = time.time() if now is None else now
    window = usage.minute(now)
    name = keys.auth_failures(client, window)
    try:
        pipeline = get_redis().pipeline()
        pipeline.incr(name)
        pipeline.expire(name, usage.WINDOW_TTL_S)
        failures = int(pipeline.execute()[0])
    except RedisError:
        log.warning("could not count a failed authentication from %s", client)
        return
    if failures >= settings.auth_failures_per_minute:
        if len(_blocked) >= MAX_BLOCKED:
            for address in [a for a, until in _blocked.items() if until <= now]:
                del _blocked[address]
        _blocked[client] = (window + 1) * 60
