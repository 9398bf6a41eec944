"""Turning job events into delivery rows, written in the same transaction as the change they
report, so an event is never lost between the job's update and its webhook."""

import json
import secrets
from datetime import timedelta
from typing import Any

from shared.config import Settings
from shared.models import Delivery, Job, utcnow
from shared.schemas import JobPublic
from shared.states import JobStatus

JOB_STARTED = "job.started"
JOB_PROGRESS = "job.progress"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELED = "job.canceled"
DEFAULT_EVENTS = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELED)  # when a job names no filter

EVENT_FOR_STATUS = {
    JobStatus.running: JOB_STARTED,
    JobStatus.succeeded: JOB_SUCCEEDED,
    JobStatus.failed: JOB_FAILED,
    JobStatus.canceled: JOB_CANCELED,
}

EVALUATION_POLICY = "evaluation"  # app builds' callbacks: 200 only, retried until a deadline
JOB_EVALUATED = "job.evaluation"

REDISPATCH_AFTER_S = 60
"""Where a redelivered delivery's `next_attempt_at` is set; like a new one, it has made no
attempt yet, so it is due at once, and the reconciler wakes a worker for it if none came."""


def wants(job: Job, event_type: str) -> bool:
    """Whether the job's webhook should hear of this event."""
    if not job.webhook_url or job.webhook_gone_at is not None:
        return False
    return event_type in (job.webhook_events or DEFAULT_EVENTS)


def delivery_for(job: Job, event_type: str, settings: Settings) -> Delivery | None:
    """A pending delivery of the event with the job as it is now, or None if unwanted."""
    if not wants(job, event_type) or job.webhook_url is None:
        return None
    event_id = "msg_" + secrets.token_hex(12)
    now = utcnow()
    body = {
        "type": event_type,
        "id": event_id,
        "created_at": now.isoformat().replace("+00:00", "Z"),
        "data": JobPublic.from_job(job, settings.public_url or "").model_dump(mode="json"),
    }
    return Delivery(
        job_id=job.id,
        owner_id=job.owner_id,
        event_id=event_id,
        event_type=event_type,
        url=job.webhook_url,
        payload=json.dumps(body, separators=(",", ":")),
        next_attempt_at=now,  # due at once: a delivery with no attempts always is
    )


def evaluation_delivery(job: Job, url: str, body: dict[str, Any], deadline_s: float) -> Delivery:
    """The callback an app build owes its evaluator, under the evaluation policy."""
    now = utcnow()
    return Delivery(
        job_id=job.id,
        owner_id=job.owner_id,
        event_id="msg_" + secrets.token_hex(12),
        event_type=JOB_EVALUATED,
        url=url,
        payload=json.dumps(body, separators=(",", ":")),
        policy=EVALUATION_POLICY,
        deadline_at=job.created_at + timedelta(seconds=deadline_s),
        next_attempt_at=now,  # due at once: a delivery with no attempts always is
    )
