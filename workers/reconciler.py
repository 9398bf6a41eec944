"""The reconciler: repairs what Redis and dead workers leave behind.

- A queued job whose message is gone (Redis flushed or restarted) is published again.
- A running job whose lease expired (its worker died) goes back to the queue with attempt + 1,
  or fails with `lease_expired` once it has used all its attempts.
- A webhook delivery whose next attempt is due is published; one whose worker died mid-attempt
  becomes pending again. Retries thus live in the database, not in Redis.
One reconciler is active at a time (a Redis lock); others stand by.
"""

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta

from shared import crud, keys, lifecycle
from shared.broker import get_redis
from shared.config import Settings, get_settings
from shared.db import open_session
from shared.dispatch import dispatch_delivery, enqueue
from shared.models import Job, utcnow
from shared.states import JobStatus
from shared.webhooks import outbox

log = logging.getLogger(__name__)

BATCH = 500  # jobs looked at per kind of repair per pass


@dataclass
class Repairs:
    """What one pass did."""

    republished: int = 0
    retried: int = 0
    failed: int = 0
    deliveries: int = 0


def reconcile_once(settings: Settings) -> Repairs:
    """One pass over stalled and lost jobs."""
    repairs = Repairs()
    now = utcnow()
    with open_session() as session:
        for job in crud.jobs_with_expired_lease(session=session, now=now, limit=BATCH):
            if job.attempt < job.max_attempts:
                repairs.retried += _retry(job)
            else:
                repairs.failed += _fail_exhausted(job)
        before = now - timedelta(seconds=settings.requeue_after_seconds)
        queued = crud.queued_jobs_before(session=session, before=before, limit=BATCH)
    if queued:
        published = get_redis().smismember(keys.ENQUEUED_SET, [job.id for job in queued])
        for job, is_published in zip(queued, published, strict=True):
            if not is_published and enqueue(job):
                log.info("republished job %s whose message was lost", job.id)
                repairs.republished += 1
    repairs.deliveries = _publish_due_deliveries()
    return repairs


def _publish_due_deliveries() -> int:
    now = utcnow()
    later = now + timedelta(seconds=outbox.REDISPATCH_AFTER_S)
    published = 0
    with open_session() as session:
        crud.release_stalled_deliveries(session=session, now=now)
        for delivery in crud.due_deliveries(session=session, now=now, limit=BATCH):
            if crud.postpone_delivery(
                session=session, delivery_id=delivery.id, now=now, until=later
            ) and dispatch_delivery(delivery.id):
                published += 1
    return published


def _retry(job: Job) -> int:
    with open_session() as session:
        retried = lifecycle.change_status(
            session=session,
            job_id=job.id,
            to=JobStatus.queued,
            expected_attempt=job.attempt,
            attempt=job.attempt + 1,
            queued_at=utcnow(),
            lease_expires_at=None,
            worker=None,
        )
    if retried is None:
        return 0
    log.warning("job %s lost its worker; retrying as attempt %d", job.id, retried.attempt)
    enqueue(retried)
    return 1


def _fail_exhausted(job: Job) -> int:
    message = f"the job's worker stopped responding on each of its {job.attempt} attempts"
    with open_session() as session:
        failed = lifecycle.change_status(
            session=session,
            job_id=job.id,
            to=JobStatus.failed,
            expected_attempt=job.attempt,
            error={"code": "lease_expired", "message": message},
            finished_at=utcnow(),
            lease_expires_at=None,
        )
    if failed is None:
        return 0
    log.error("job %s failed: %s", job.id, message)
    return 1


def _hold_lock(owner: str, ttl_s: int) -> bool:
    client = get_redis()
    if client.set(keys.RECONCILER_LOCK, owner, nx=True, ex=ttl_s):
        return True
    if client.get(keys.RECONCILER_LOCK) == owner.encode():
        client.expire(keys.RECONCILER_LOCK, ttl_s)
        return True
    return False


def run_forever(stop: threading.Event | None = None) -> None:
    """Reconcile every `KILN_RECONCILE_INTERVAL_SECONDS` until `stop` is set."""
    settings = get_settings()
    stop = stop or threading.Event()
    owner = f"{socket.gethostname()}:{os.getpid()}"
    ttl_s = max(2, int(settings.reconcile_interval_seconds * 3))
    log.info("reconciler running every %.1fs", settings.reconcile_interval_seconds)
    while not stop.is_set():
        try:
            if _hold_lock(owner, ttl_s):
                repairs = reconcile_once(settings)
                if repairs != Repairs():
                    log.info("reconciled: %s", repairs)
        except Exception:
            log.warning("reconcile pass failed; trying again", exc_info=True)
        stop.wait(settings.reconcile_interval_seconds)
