"""When a delivery is done, when it stops, and how long it waits before the next attempt."""

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

RETRYABLE_STATUS = frozenset({408, 425, 429})  # and every 5xx
MAX_RETRY_AFTER_S = 24 * 3600  # a receiver cannot park a delivery for longer than a day


class Verdict(StrEnum):
    """What one attempt's answer means for the delivery."""

    succeeded = "succeeded"  # any 2xx
    retry = "retry"  # network error, time-out, 408, 425, 429, 5xx
    failed = "failed"  # any other answer: the receiver refused it
    gone = "gone"  # 410: stop, and send this job's URL nothing more


def judge(status_code: int | None) -> Verdict:
    """The verdict on an attempt; `None` means no HTTP answer at all."""
    if status_code is None or status_code in RETRYABLE_STATUS or status_code >= 500:
        return Verdict.retry
    if 200 <= status_code < 300:
        return Verdict.succeeded
    if status_code == 410:
        return Verdict.gone
    return Verdict.failed


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def next_delay(
    attempts_made: int,
    delays: list[float],
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt, or None when the schedule is used up.

    Full jitter (a uniform draw up to the scheduled delay) spreads retries of many deliveries
    that failed together; a receiver's `Retry-After` is a floor.
    """
    if attempts_made >= len(delays):
        return None
    delay = (rng or random).uniform(0, delays[attempts_made])
    return max(delay, retry_after) if retry_after is not None else delay


def evaluation_delay(attempts_made: int, seconds_left: float) -> float | None:
    """Evaluation callbacks: 1, 2, 4, 8… seconds between attempts, while the deadline allows."""
    delay = float(2 ** (attempts_made - 1))
    return delay if delay <= seconds_left else None
