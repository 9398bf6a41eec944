"""Runs one job: claim it, keep its lease, call its flow, and record exactly one outcome.

A job of several steps (tasks on different queues) hands itself on: the flow of one step returns
a `Handoff`, and the next step's task continues the same attempt of the job.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared import crud, keys, lifecycle, registry
from shared.config import Settings, get_settings
from shared.db import open_session
from shared.dispatch import dispatch_step
from shared.exceptions import JobCanceled, JobError
from shared.logs import job_id_var, request_id_var
from shared.models import Delivery, Job, utcnow
from shared.states import JobStatus
from workers.lease import LeaseKeeper
from workers.tokens import TokenSender

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a flow gets: the job, the settings, and ways to report back."""

    job: Job
    settings: Settings
    lease: LeaseKeeper
    tokens: TokenSender
    busy_worker: str | None = None  # the gpu worker shown busy with the job, until its outcome

    def should_stop(self) -> bool:
        """True once the job was canceled or handed to another worker."""
        return self.lease.lost.is_set()

    def emit_token(self, delta: str) -> None:
        self.tokens.send(delta)

    def emit_progress(self, progress: dict[str, Any]) -> None:
        with open_session() as session:
            lifecycle.record_progress(session=session, job=self.job, progress=progress)


@dataclass(frozen=True)
class Handoff:
    """A step's answer when the job goes on in another task: which, and what it needs."""

    task: str
    artifacts: dict[str, Any]


@dataclass(frozen=True)
class Completion:
    """A flow's result with one more delivery to write in the same transaction."""

    result: dict[str, Any]
    also_deliver: Delivery | None = None


Flow = Callable[[JobContext], dict[str, Any] | Handoff | Completion]
"""The body of a job kind (or of one step): the job's result, a `Handoff`, or a JobError."""

HANDOFF_LEASE_S = 600  # time for the next step's message to be picked up from its queue
REQUEUE_PAUSE_S = 1.0  # before giving a message back while the database is unreachable
UNREACHABLE = (OperationalError, InterfaceError, RedisError)
"""Errors of a database or Redis that is down or restarting: the message is given back."""


def run_job(job_id: str, flow: Flow, *, worker: str) -> None:
    """Execute a job's flow if this message wins the claim; a duplicate message does nothing.

    Every job starts on a `gpu` worker, which the registry shows busy with it until it ends.
    """
    settings = get_settings()
    with _requeued_if_unreachable(job_id):
        job = _claim(job_id, worker=worker, lease_seconds=settings.lease_seconds)
    if job is None:
        log.info("job %s is not queued (duplicate or stale message); skipping", job_id)
        return
    _run(job, flow, busy_worker=worker)


def continue_job(job_id: str, attempt: int, flow: Flow) -> None:
    """Execute a later step of a job, if the job is still running that attempt."""
    with _requeued_if_unreachable(job_id), open_session() as session:
        job = crud.get_job(session=session, job_id=job_id)
    if job is None or job.status != JobStatus.running or job.attempt != attempt:
        log.info("job %s moved on; skipping its step for attempt %d", job_id, attempt)
        return
    _run(job, flow)


@contextmanager
def _requeued_if_unreachable(job_id: str) -> Iterator[None]:
    """Give the message back to its queue when the database or Redis cannot be reached before
    the job starts: acknowledged, it would leave a queued job that nothing publishes again."""
    try:
        yield
    except UNREACHABLE as exc:
        log.warning("job %s: %s unreachable; its message goes back", job_id, type(exc).__name__)
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(f"unreachable: {type(exc).__name__}", requeue=True) from exc


def _run(job: Job, flow: Flow, *, busy_worker: str | None = None) -> None:
    """`busy_worker`: the worker that the registry shows busy with the job; the outcome's round
    trip shows it idle, or, when the job ends in another way here, a round trip of its own."""
    settings = get_settings()
    request_token = request_id_var.set(job.request_id)
    job_token = job_id_var.set(job.id)
    context: JobContext | None = None
    try:
        log.info("job started", extra={"task": job.kind})
        with (
            LeaseKeeper(job.id, job.attempt, settings.lease_seconds, job.lease_expires_at) as lease,
            TokenSender(job.id) as tokens,  # every token is in the stream before the outcome
        ):
            context = JobContext(job, settings, lease, tokens, busy_worker)
            handoff = _execute(context, flow)
        # After the lease keeper stopped, so that no renewal shortens the hand-off lease.
        if handoff is not None:
            _hand_off(job, handoff)
    finally:
        if busy_worker is not None and (context is None or context.busy_worker is not None):
            registry.mark_idle(busy_worker)
        job_id_var.reset(job_token)
        request_id_var.reset(request_token)


def _hand_off(job: Job, handoff: Handoff) -> None:
    until = utcnow() + timedelta(seconds=HANDOFF_LEASE_S)
    with open_session() as session:
        kept = crud.hand_off(
            session=session,
            job_id=job.id,
            attempt=job.attempt,
            artifacts=handoff.artifacts,
            lease_until=until,
        )
    if kept:
        dispatch_step(handoff.task, job.id, job.attempt)
        log.info("job handed on to %s", handoff.task)


def _claim(job_id: str, *, worker: str, lease_seconds: float) -> Job | None:
    """Move the job to running, and in the same Redis round trip take it off the set of
    published jobs and show this worker busy with it."""

    def also_send(pipe: "redis.client.Pipeline") -> None:
        pipe.srem(keys.ENQUEUED_SET, job_id)
        registry.queue_busy(pipe, worker, job_id)

    now = utcnow()
    with open_session() as session:
        return lifecycle.change_status(
            session=session,
            job_id=job_id,
            to=JobStatus.running,
            also_send=also_send,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            worker=worker,
        )


def _execute(context: JobContext, flow: Flow) -> Handoff | None:
    try:
        result = flow(context)
    except JobCanceled:
        log.info("job stopped: canceled")
        return None
    except JobError as exc:
        _finish(context, JobStatus.failed, error={"code": exc.code, "message": exc.message})
        return None
    except SoftTimeLimitExceeded:
        error = {"code": "timeout", "message": "the job ran too long"}
        _finish(context, JobStatus.failed, error=error)
        return None
    except Exception as exc:
        log.exception("job failed with an unexpected error")
        message = f"the worker hit an unexpected error ({type(exc).__name__})"
        error = {"code": "internal_error", "message": message}
        _finish(context, JobStatus.failed, error=error)
        return None
    if isinstance(result, Handoff):
        return result
    if isinstance(result, Completion):
        _finish(
            context, JobStatus.succeeded, result=result.result, also_deliver=result.also_deliver
        )
    else:
        _finish(context, JobStatus.succeeded, result=result)
    return None


def _finish(
    context: JobContext,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
    also_deliver: Delivery | None = None,
) -> None:
    """Record the job's outcome; in the outcome's round trip the tokens that still wait reach
    its stream first, and the worker busy with it is shown idle."""
    job, busy_worker = context.job, context.busy_worker

    def also_send(pipe: "redis.client.Pipeline") -> None:
        context.tokens.queue_waiting(pipe)
        if busy_worker is not None:
            registry.queue_idle(pipe, busy_worker)

    with open_session() as session:
        finished = lifecycle.change_status(
            session=session,
            job_id=job.id,
            to=status,
            expected_attempt=job.attempt,
            also_deliver=also_deliver,
            also_send=also_send,
            result=result,
            error=error,
            finished_at=utcnow(),
            lease_expires_at=None,
        )
    if finished is None:
        log.info("job was canceled or retried elsewhere; its outcome here is discarded")
        return
    context.busy_worker = None
    log.info("job %s", status, extra={"task": job.kind})
