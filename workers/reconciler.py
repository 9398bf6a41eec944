"""The reconciler: repairs what Redis and dead workers leave behind.

- A queued job whose message is gone (Redis flushed or restarted) is published again; so is one
  whose message a worker reserved long ago without starting it (a worker killed outright never
  gives its reserved message back, and Redis would only after its hour-long visibility time-out).
- A running job whose lease expired (its worker died) goes back to the queue with attempt + 1,
  or fails with `lease_expired` once it has used all its attempts.
- When a webhook delivery is due, the callbacks workers get a wake-up (unless one is on its
  way); a delivery whose worker died mid-attempt becomes pending again. Retries thus live in
  the database, not in Redis.
One reconciler is active at a time (a Redis lock); others stand by.
"""

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

from shared import crud, keys, lifecycle, metrics
from shared.broker import get_redis
from shared.config import Settings, get_settings
from shared.db import open_session
from shared.dispatch import dispatch_delivery, enqueue
from shared.models import Job, utcnow
from shared.queues import TASK_FOR_KIND
from shared.states import JobStatus

log = logging.getLogger(__name__)

BATCH = 500  # jobs looked at per kind of repair per pass
RESCUE_EVERY_S = 300  # at most one rescue per job in this long
STARTING_TASKS = frozenset(TASK_FOR_KIND.values())


@dataclass
class Repairs:
    """What one pass did."""

    republished: int = 0
    rescued: int = 0  # queued jobs whose reserved message went stale, published again
    retried: int = 0
    failed: int = 0
    deliveries: int = 0  # wake-ups for due deliveries


def reconcile_once(settings: Settings) -> Repairs:
    """One pass over stalled and lost jobs."""
    repairs = Repairs()
    now = utcnow()
    with open_session() as session:
        for job in crud.jobs_with_expired_lease(session=session, now=now, limit=BATCH):
            if job.attempt < job.max_attempts:
                repairs.retried += retry(job)
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
    repairs.rescued = _rescue_stale_reservations(settings)
    repairs.deliveries = _wake_for_due_deliveries()
    return repairs


def _rescue_stale_reservations(settings: Settings) -> int:
    """Publish again the queued jobs whose message a worker reserved more than a lease ago.

    A live worker that reserved a message behind a long task still holds it; the copy then goes
    to whichever worker is free first, and the claim turns the later one away. Each job is
    rescued at most once per `RESCUE_EVERY_S`, so a long task cannot multiply its copies.
    """
    client = get_redis()
    stale_since = time.time() - settings.lease_seconds
    tags: list[bytes] = client.zrangebyscore(  # type: ignore[assignment]
        keys.CELERY_UNACKED_INDEX, "-inf", stale_since, start=0, num=BATCH
    )
    if not tags:
        return 0
    job_ids = [
        job_id
        for raw in client.hmget(keys.CELERY_UNACKED, tags)
        if raw and (job_id := _starting_job(raw))
    ]
    if not job_ids:
        return 0
    with open_session() as session:
        queued = crud.queued_jobs_among(session=session, job_ids=job_ids)
    rescued = 0
    for job in queued:
        if client.set(keys.job_rescued(job.id), 1, nx=True, ex=RESCUE_EVERY_S) and enqueue(job):
            log.info("republished job %s whose reserved message went stale", job.id)
            rescued += 1
    return rescued


def _starting_job(raw: bytes | str) -> str | None:
    """The job id of a reserved message that starts a job (not one of a job's later steps)."""
    try:
        message = json.loads(raw)[0]
        headers = message["headers"]
        task, job_id = headers["task"], headers["id"]
    except (ValueError, LookupError, TypeError):
        return None
    return str(job_id) if task in STARTING_TASKS else None


def _wake_for_due_deliveries() -> int:
    """1 when some delivery is due and the callbacks workers have (or get) a wake-up."""
    now = utcnow()
    with open_session() as session:
        crud.release_stalled_deliveries(session=session, now=now)
        due = crud.first_due_delivery(session=session, now=now)
    return int(due is not None and dispatch_delivery(due))


def retry(job: Job) -> int:
    """Queue a job whose lease ran out as its next attempt; 1 if this call did it."""
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
                    for action, count in asdict(repairs).items():
                        metrics.RECONCILER_ACTIONS.labels(action).inc(count)
        except Exception:
            log.warning("reconcile pass failed; trying again", exc_info=True)
        stop.wait(settings.reconcile_interval_seconds)
