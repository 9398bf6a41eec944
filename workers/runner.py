"""Runs one job: claim it, keep its lease, call its flow, and record exactly one outcome."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared import events, keys, lifecycle
from shared.broker import get_redis
from shared.config import Settings, get_settings
from shared.db import open_session
from shared.exceptions import JobCanceled, JobError
from shared.logs import job_id_var, request_id_var
from shared.models import Job, utcnow
from shared.states import JobStatus
from workers.lease import LeaseKeeper

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a flow gets: the job, the settings, and ways to report back."""

    job: Job
    settings: Settings
    lease: LeaseKeeper

    def should_stop(self) -> bool:
        """True once the job was canceled or handed to another worker."""
        return self.lease.lost.is_set()

    def emit_token(self, delta: str) -> None:
        events.append_token(get_redis(), self.job.id, delta)

    def emit_progress(self, progress: dict[str, Any]) -> None:
        with open_session() as session:
            lifecycle.record_progress(session=session, job=self.job, progress=progress)


Flow = Callable[[JobContext], dict[str, Any]]
"""The body of a job kind: returns the job's result or raises JobError."""


def run_job(job_id: str, flow: Flow, *, worker: str) -> None:
    """Execute a job's flow if this message wins the claim; a duplicate message does nothing."""
    settings = get_settings()
    job = _claim(job_id, worker=worker, lease_seconds=settings.lease_seconds)
    if job is None:
        log.info("job %s is not queued (duplicate or stale message); skipping", job_id)
        return
    request_token = request_id_var.set(job.request_id)
    job_token = job_id_var.set(job.id)
    try:
        log.info("job started", extra={"task": job.kind})
        with LeaseKeeper(job.id, job.attempt, settings.lease_seconds) as lease:
            _execute(JobContext(job=job, settings=settings, lease=lease), flow)
    finally:
        job_id_var.reset(job_token)
        request_id_var.reset(request_token)


def _claim(job_id: str, *, worker: str, lease_seconds: float) -> Job | None:
    now = utcnow()
    with open_session() as session:
        job = lifecycle.change_status(
            session=session,
            job_id=job_id,
            to=JobStatus.running,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            worker=worker,
        )
    get_redis().srem(keys.ENQUEUED_SET, job_id)
    return job


def _execute(context: JobContext, flow: Flow) -> None:
    job = context.job
    try:
        result = flow(context)
    except JobCanceled:
        log.info("job stopped: canceled")
        return
    except JobError as exc:
        _finish(job, JobStatus.failed, error={"code": exc.code, "message": exc.message})
        return
    except SoftTimeLimitExceeded:
        _finish(job, JobStatus.failed, error={"code": "timeout", "message": "the job ran too long"})
        return
    except Exception as exc:
        log.exception("job failed with an unexpected error")
        message = f"the worker hit an unexpected error ({type(exc).__name__})"
        _finish(job, JobStatus.failed, error={"code": "internal_error", "message": message})
        return
    _finish(job, JobStatus.succeeded, result=result)


def _finish(
    job: Job,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
) -> None:
    with open_session() as session:
        finished = lifecycle.change_status(
            session=session,
            job_id=job.id,
            to=status,
            expected_attempt=job.attempt,
            result=result,
            error=error,
            finished_at=utcnow(),
            lease_expires_at=None,
        )
    if finished is None:
        log.info("job was canceled or retried elsewhere; its outcome here is discarded")
        return
    log.info("job %s", status, extra={"task": job.kind})
