"""What the routes call: submit, read and cancel jobs, manage keys. No HTTP in here."""

import hashlib
import json
import logging
from datetime import timedelta

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.errors import field_name
from shared import crud, keys, lifecycle
from shared.broker import get_redis
from shared.config import Settings
from shared.dispatch import dispatch_delivery, enqueue
from shared.exceptions import Conflict, IdempotencyKeyReused, InvalidInput, NotFound
from shared.models import ApiKey, Delivery, DeliveryAttempt, Job, utcnow
from shared.schemas import KIND_INPUTS, JobCreate
from shared.states import TERMINAL, DeliveryStatus, JobStatus
from shared.webhooks.outbox import REDISPATCH_AFTER_S
from shared.webhooks.signing import new_secret
from shared.webhooks.ssrf import BlockedDestination, vet_url

log = logging.getLogger(__name__)

CANCEL_FLAG_TTL_S = 3600  # longer than any job keeps running after it was canceled


def _owner_filter(api_key: ApiKey) -> str | None:
    """The owner whose jobs a key may see: its own, or everyone's for the admin."""
    return None if api_key.is_admin else api_key.id


def _validated_input(body: JobCreate) -> dict[str, object]:
    try:
        model = KIND_INPUTS[body.kind].model_validate(body.input)
    except ValidationError as exc:
        details = [
            {"field": field_name(("input", *error["loc"])), "message": error["msg"]}
            for error in exc.errors()
        ]
        first = details[0]
        raise InvalidInput(f"{first['field']}: {first['message']}", details=details) from None
    return model.model_dump(mode="json", exclude_unset=True)


def _vet_webhook_url(url: str, settings: Settings) -> None:
    try:
        vet_url(url, allow_private=settings.callback_allow_private)
    except BlockedDestination as exc:
        raise BlockedDestination(
            f"webhook_url: {exc.message}",
            details=[{"field": "webhook_url", "message": exc.message}],
        ) from None


def _request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job | None, request_hash: str) -> Job | None:
    if job is not None and job.request_hash != request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body"
        )
    return job


def submit_job(
    *,
    session: Session,
    settings: Settings,
    api_key: ApiKey,
    body: JobCreate,
    idempotency_key: str | None,
    request_id: str | None,
) -> tuple[Job, bool]:
    """Write the job row, then publish it; returns the job and whether it is new.

    The same idempotency key and body return the existing job; a different body is refused.
    """
    job_input = _validated_input(body)
    if body.webhook_url is not None:
        _vet_webhook_url(str(body.webhook_url), settings)
    request_hash = _request_hash(body) if idempotency_key else None
    if idempotency_key:
        existing = crud.get_job_by_idempotency_key(
            session=session, owner_id=api_key.id, key=idempotency_key
        )
        if (job := _replay(existing, request_hash or "")) is not None:
            return job, False
    job = Job(
        kind=body.kind,
        input=job_input,
        meta=body.metadata,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        webhook_events=list(body.webhook_events) if body.webhook_events else None,
        owner_id=api_key.id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        request_id=request_id,
        max_attempts=settings.job_max_attempts,
    )
    try:
        crud.insert_job(session=session, job=job)
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        session.rollback()
        existing = crud.get_job_by_idempotency_key(
            session=session, owner_id=api_key.id, key=idempotency_key or ""
        )
        if (replayed := _replay(existing, request_hash or "")) is None:
            raise
        return replayed, False
    enqueue(job, announce=True)
    log.info("job %s queued", job.id, extra={"task": job.kind})
    return job, True


def get_job(*, session: Session, api_key: ApiKey, job_id: str) -> Job:
    """The job if the key may see it; 404 otherwise (also for another owner's job)."""
    job = crud.get_job(session=session, job_id=job_id, owner_id=_owner_filter(api_key))
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job


def list_jobs(
    *,
    session: Session,
    api_key: ApiKey,
    status: JobStatus | None,
    kind: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Job], bool]:
    """A page of the key's jobs, newest first, and whether more follow."""
    jobs = crud.list_jobs(
        session=session,
        owner_id=_owner_filter(api_key),
        status=status,
        kind=kind,
        before=cursor,
        limit=limit + 1,
    )
    return jobs[:limit], len(jobs) > limit


def cancel_job(*, session: Session, api_key: ApiKey, job_id: str) -> Job:
    """Cancel a queued or running job; a running job's worker stops at its next check."""
    job = get_job(session=session, api_key=api_key, job_id=job_id)
    if job.status not in TERMINAL:
        canceled = lifecycle.change_status(
            session=session,
            job_id=job.id,
            to=JobStatus.canceled,
            error={"code": "canceled", "message": "the job was canceled"},
            finished_at=utcnow(),
            lease_expires_at=None,
        )
        if canceled is not None:
            get_redis().set(keys.job_cancel(job.id), "1", ex=CANCEL_FLAG_TTL_S)
        job = get_job(session=session, api_key=api_key, job_id=job_id)
    if job.status != JobStatus.canceled:
        raise Conflict(
            f"the job already {job.status} and can no longer be canceled", code="not_cancelable"
        )
    return job


def create_key(*, session: Session, name: str) -> tuple[ApiKey, str]:
    return crud.create_api_key(session=session, name=name)


def list_keys(*, session: Session) -> list[ApiKey]:
    return crud.list_api_keys(session=session)


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    api_key = crud.revoke_api_key(session=session, key_id=key_id)
    if api_key is None:
        raise NotFound(f"no API key with id {key_id!r}")
    return api_key


def list_deliveries(
    *,
    session: Session,
    api_key: ApiKey,
    job_id: str | None = None,
    status: DeliveryStatus | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> tuple[list[tuple[Delivery, list[DeliveryAttempt]]], bool]:
    """Deliveries with their attempts (of one job, or of all the key's jobs), newest first."""
    if job_id is not None:
        get_job(session=session, api_key=api_key, job_id=job_id)
    deliveries = crud.list_deliveries(
        session=session,
        owner_id=_owner_filter(api_key),
        job_id=job_id,
        status=status,
        before=cursor,
        limit=limit + 1,
    )
    page = deliveries[:limit]
    attempts = crud.attempts_of(session=session, delivery_ids=[d.id for d in page])
    return [(delivery, attempts[delivery.id]) for delivery in page], len(deliveries) > limit


def redeliver(
    *, session: Session, api_key: ApiKey, job_id: str, delivery_id: str
) -> tuple[Delivery, list[DeliveryAttempt]]:
    """Send a finished delivery again, same event id and body, with a fresh schedule."""
    get_job(session=session, api_key=api_key, job_id=job_id)
    delivery = crud.get_delivery(
        session=session, delivery_id=delivery_id, owner_id=_owner_filter(api_key)
    )
    if delivery is None or delivery.job_id != job_id:
        raise NotFound(f"no delivery with id {delivery_id!r} for this job")
    republish_at = utcnow() + timedelta(seconds=REDISPATCH_AFTER_S)
    if not crud.redeliver(session=session, delivery_id=delivery.id, republish_at=republish_at):
        raise Conflict("the delivery is still in progress", code="delivery_in_progress")
    dispatch_delivery(delivery.id)
    delivery = crud.get_delivery(session=session, delivery_id=delivery.id)
    assert delivery is not None
    attempts = crud.attempts_of(session=session, delivery_ids=[delivery.id])[delivery.id]
    return delivery, attempts


def webhook_secret(*, session: Session, api_key: ApiKey, rotate: bool) -> str:
    """The key's webhook signing secret; `rotate` replaces it (a key without one gets one)."""
    if rotate or api_key.webhook_secret is None:
        return crud.set_signing_secret(session=session, api_key=api_key, secret=new_secret())
    return api_key.webhook_secret
