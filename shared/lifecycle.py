"""Job status changes with everything that goes with them: the webhook delivery (in the same
transaction), then in one Redis round trip the usage, the status event on the job's stream and
whatever else the caller sends with it, and the delivery's message."""

import logging
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisError
from sqlmodel import Session

from shared import crud, events, metrics, usage
from shared.broker import get_redis
from shared.config import get_settings
from shared.dispatch import dispatch_delivery
from shared.models import Delivery, Job
from shared.states import JobStatus
from shared.webhooks import outbox

log = logging.getLogger(__name__)


def change_status(
    *,
    session: Session,
    job_id: str,
    to: JobStatus,
    expected_attempt: int | None = None,
    also_deliver: Delivery | None = None,
    also_send: Callable[["redis.client.Pipeline"], object] | None = None,
    **values: Any,
) -> Job | None:
    """Move the job to `to` (see `crud.move_job`); returns the job, or None if it lost.

    `also_deliver` is one more delivery (an evaluation callback) written with the change;
    `also_send` adds the caller's Redis commands to the change's round trip, before the event.
    """
    job = crud.move_job(
        session=session, job_id=job_id, to=to, expected_attempt=expected_attempt, **values
    )
    if job is None:
        session.rollback()
        return None
    event_type = outbox.EVENT_FOR_STATUS.get(to)
    delivery = outbox.delivery_for(job, event_type, get_settings()) if event_type else None
    deliveries = [d for d in (delivery, also_deliver) if d is not None]
    session.add_all(deliveries)
    session.commit()
    _announce(job, deliveries, also_send)
    _count(job, to)
    return job


def record_progress(*, session: Session, job: Job, progress: dict[str, Any]) -> None:
    """Store a running job's progress, tell its stream, and its webhook if it asked."""
    if not crud.set_progress(
        session=session, job_id=job.id, attempt=job.attempt, progress=progress
    ):
        session.rollback()
        return
    job.progress = progress
    delivery = outbox.delivery_for(job, outbox.JOB_PROGRESS, get_settings())
    if delivery is not None:
        session.add(delivery)
    session.commit()
    side_step(
        lambda: events.append(get_redis(), job.id, events.EVENT_PROGRESS, progress, refresh=False),
        "could not record a progress event of job %s",
        job.id,
    )
    if delivery is not None:
        dispatch_delivery(delivery.id)


def _count(job: Job, to: JobStatus) -> None:
    side_step(
        lambda: metrics.observe_status_change(job, to),
        "could not count the %s change of job %s",
        to,
        job.id,
        catch=Exception,
        exc_info=True,
    )


def _announce(
    job: Job,
    deliveries: list[Delivery],
    also_send: Callable[["redis.client.Pipeline"], object] | None,
) -> None:
    """One round trip: the caller's commands, a succeeded job's usage (counted before anyone
    hears it finished, so a caller's next request sees it), then the status event. A Redis
    failure loses them (the row holds the status, and the SSE endpoint rebuilds a missing final
    event from it), never the job."""

    def send() -> None:
        pipe = get_redis().pipeline(transaction=False)
        if also_send is not None:
            also_send(pipe)
        if job.status == JobStatus.succeeded:
            usage.queue_job(pipe, job)
        events.queue_status(pipe, job)
        pipe.execute()

    side_step(send, "could not record the %s event of job %s", job.status, job.id)
    for delivery in deliveries:
        dispatch_delivery(delivery.id)


def side_step(
    step: Callable[[], object],
    failed: str,
    *args: object,
    catch: type[Exception] = RedisError,
    exc_info: bool = False,
) -> None:
    """Run a step that follows the real work (a committed change, a job's flow); if it raises
    `catch`, log `failed % args` as a warning instead, so that a side step never fails the work:
    a Redis outage loses events from a stream, never a job."""
    try:
        step()
    except catch:
        log.warning(failed, *args, exc_info=exc_info)
