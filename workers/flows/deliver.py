"""One webhook delivery attempt: claim, sign, send, log, and decide what comes next.

A failed webhook never touches its job: the job's outcome is already recorded.
"""

import logging
from datetime import timedelta
from functools import lru_cache

from shared import crud
from shared.config import get_settings
from shared.db import open_session
from shared.models import Delivery, DeliveryAttempt, utcnow
from shared.states import DeliveryStatus
from shared.webhooks.outbox import EVALUATION_POLICY
from shared.webhooks.policy import (
    Verdict,
    evaluation_delay,
    judge,
    next_delay,
    parse_retry_after,
)
from shared.webhooks.sender import Answer, WebhookSender
from shared.webhooks.signing import signed_headers
from shared.webhooks.ssrf import redact_url

log = logging.getLogger(__name__)

LOCK_MARGIN_S = 30  # beyond the request time-out, before a stalled attempt is taken back


@lru_cache
def get_sender() -> WebhookSender:
    """This process's sender (and connection pool), built after the worker forked."""
    settings = get_settings()
    return WebhookSender(
        connect_timeout_s=settings.webhook_connect_timeout_s,
        timeout_s=settings.webhook_timeout_s,
        allow_private=settings.callback_allow_private,
    )


def deliver(delivery_id: str) -> None:
    """Make the delivery's next attempt, if it is still pending."""
    settings = get_settings()
    lock = timedelta(seconds=settings.webhook_timeout_s + LOCK_MARGIN_S)
    with open_session() as session:
        delivery = crud.claim_delivery(
            session=session, delivery_id=delivery_id, until=utcnow() + lock
        )
        if delivery is None:
            return
        secret = crud.signing_secret(session=session, owner_id=delivery.owner_id)
    if secret is None and settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
    if secret is None:
        answer = Answer(None, 0.0, error="no webhook signing secret is configured", blocked=True)
    else:
        headers = signed_headers(secret, delivery.event_id, delivery.payload, utcnow())
        answer = get_sender().post(delivery.url, delivery.payload, headers)
    _record(delivery, answer)


def _webhook_verdict(
    answer: Answer, number: int, delays: list[float]
) -> tuple[Verdict, float | None]:
    verdict = Verdict.failed if answer.blocked else judge(answer.status_code)
    if verdict != Verdict.retry:
        return verdict, None
    retry_after = parse_retry_after(answer.retry_after, utcnow())
    delay = next_delay(number, delays, retry_after)
    return (Verdict.failed, None) if delay is None else (verdict, delay)


def _evaluation_verdict(
    delivery: Delivery, answer: Answer, number: int
) -> tuple[Verdict, float | None]:
    """The task format's rule: only a 200 counts; anything else is retried until the deadline."""
    if answer.status_code == 200:
        return Verdict.succeeded, None
    if answer.blocked or delivery.deadline_at is None:
        return Verdict.failed, None
    delay = evaluation_delay(number, (delivery.deadline_at - utcnow()).total_seconds())
    return (Verdict.failed, None) if delay is None else (Verdict.retry, delay)


def _record(delivery: Delivery, answer: Answer) -> None:
    settings = get_settings()
    now = utcnow()
    number = delivery.attempts + 1
    if delivery.policy == EVALUATION_POLICY:
        verdict, delay = _evaluation_verdict(delivery, answer, number)
    else:
        verdict, delay = _webhook_verdict(answer, number, settings.webhook_delays)
    outcome = "retry" if delay is not None else verdict.value
    error = answer.error
    if verdict == Verdict.failed and error is None:
        error = f"the receiver answered {answer.status_code}"
        if delay is None and judge(answer.status_code) == Verdict.retry:
            error += f"; gave up after {number} attempts"
    status = {
        Verdict.succeeded: DeliveryStatus.succeeded,
        Verdict.retry: DeliveryStatus.pending,
    }.get(verdict, DeliveryStatus.failed)
    attempt = DeliveryAttempt(
        delivery_id=delivery.id,
        number=number,
        attempted_at=now,
        url=redact_url(delivery.url),
        status_code=answer.status_code,
        latency_ms=answer.latency_ms,
        response_excerpt=answer.excerpt,
        error=error,
        outcome=outcome,
    )
    with open_session() as session:
        crud.record_attempt(
            session=session,
            delivery=delivery,
            attempt=attempt,
            status=status,
            attempts=number,
            next_attempt_at=now + timedelta(seconds=delay) if delay is not None else None,
            last_status_code=answer.status_code,
            last_error=error,
            finished_at=None if status == DeliveryStatus.pending else now,
        )
        if verdict == Verdict.gone:
            crud.stop_deliveries_to(
                session=session,
                job_id=delivery.job_id,
                url=delivery.url,
                reason="the receiver answered 410 Gone to an earlier event",
            )
    log.info(
        "webhook %s attempt %d: %s (%s)",
        delivery.event_type,
        number,
        outcome,
        answer.status_code or answer.error,
        extra={"task": "deliver_webhook"},
    )
