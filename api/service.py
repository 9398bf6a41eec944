"""What the routes call: submit, read and cancel jobs, manage keys. No HTTP in here."""

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api import limits, local_cache
from api.errors import field_name
from api.job_writer import JOBS
from api.local_cache import LocalCache
from shared import crud, keys, lifecycle, metrics
from shared.attachments import decode_all
from shared.broker import get_redis
from shared.changes import Cached
from shared.config import Settings
from shared.crud import ADMIN_KEY_ID
from shared.db import open_session
from shared.dispatch import dispatch_delivery, enqueue
from shared.exceptions import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    ModelNotFound,
    NotFound,
)
from shared.models import ApiKey, Delivery, DeliveryAttempt, Job, utcnow
from shared.registry import servable_models
from shared.schemas import KIND_INPUTS, JobCreate, TaskBrief
from shared.states import TERMINAL, DeliveryStatus, JobStatus
from shared.webhooks.outbox import REDISPATCH_AFTER_S
from shared.webhooks.signing import new_secret
from shared.webhooks.ssrf import BlockedDestination, vet_url

log = logging.getLogger(__name__)

RUNTIME_SETTINGS = LocalCache[str](Cached.runtime_settings)
"""What admins set at run time (`crud.get_runtime_setting`), by name."""

CANCEL_FLAG_TTL_S = 3600  # longer than any job keeps running after it was canceled


T = TypeVar("T")


def in_session(call: Callable[..., T], /, **kwargs: Any) -> T:
    """`call(session=<a new session>, **kwargs)`: one unit of work, run in a worker thread by
    async routes so that a request holds a connection only while it uses it."""
    with open_session() as session:
        return call(session=session, **kwargs)


def _owner_filter(api_key: ApiKey) -> str | None:
    """The owner whose jobs a key may see: its own, or everyone's for the admin."""
    return None if api_key.is_admin else api_key.id


def _invalid(exc: ValidationError, prefix: tuple[str, ...]) -> InvalidInput:
    """A 422 naming the first invalid field (`prefix` is where the validated part sits)."""
    details = [
        {"field": field_name((*prefix, *error["loc"])), "message": error["msg"]}
        for error in exc.errors()
    ]
    first = details[0]
    return InvalidInput(f"{first['field']}: {first['message']}", details=details)


def _validated_input(body: JobCreate) -> dict[str, object]:
    try:
        model = KIND_INPUTS[body.kind].model_validate(body.input)
    except ValidationError as exc:
        raise _invalid(exc, prefix=("input",)) from None
    return model.model_dump(mode="json", exclude_unset=True)


def _vet_url_field(field: str, url: str, settings: Settings) -> None:
    try:
        vet_url(url, allow_private=settings.callback_allow_private)
    except BlockedDestination as exc:
        raise BlockedDestination(
            f"{field}: {exc.message}", details=[{"field": field, "message": exc.message}]
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
    if "model" in KIND_INPUTS[body.kind].model_fields and not job_input.get("model"):
        # Fixed at submit, so a later switch never changes what a queued job runs.
        job_input["model"] = active_model(session=session, settings=settings)
    limits.check_prompt(body.kind, job_input, settings)
    if body.webhook_url is not None:
        _vet_url_field("webhook_url", str(body.webhook_url), settings)
    request_hash = _request_hash(body) if idempotency_key else None
    if idempotency_key:
        existing = crud.get_job_by_idempotency_key(
            session=session, owner_id=api_key.id, key=idempotency_key
        )
        if (job := _replay(existing, request_hash or "")) is not None:
            return job, False
    limits.admit(settings=settings, api_key=api_key)
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
    stored, created = _insert_once(session, job)
    return (stored, True) if created else (_replay(stored, request_hash or "") or stored, False)


def _insert_once(session: Session, job: Job) -> tuple[Job, bool]:
    """Insert and publish the job; if a concurrent request with the same idempotency key won
    the insert, return that request's job instead (and False)."""
    try:
        JOBS.insert(job)
    except IntegrityError:
        existing = crud.get_job_by_idempotency_key(
            session=session, owner_id=job.owner_id, key=job.idempotency_key or ""
        )
        if existing is None:
            raise
        return existing, False
    enqueue(job, announce=True)
    metrics.JOBS_SUBMITTED.labels(job.kind).inc()
    log.info("job %s queued", job.id, extra={"task": job.kind})
    return job, True


def submit_brief(
    *, session: Session, settings: Settings, body: dict[str, Any], request_id: str | None
) -> tuple[Job, bool]:
    """Check an app brief's secret, then validate it and create its `app` job (once per
    task, round and nonce)."""
    expected = settings.task_secret
    given = body.get("secret")
    if (
        expected is None
        or not isinstance(given, str)
        or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        raise Forbidden("the secret is wrong or missing")
    try:
        brief = TaskBrief.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc, prefix=()) from None
    attachments = decode_all(
        [(attachment.name, attachment.url) for attachment in brief.attachments],
        max_bytes=settings.attachment_max_bytes,
        max_total_bytes=settings.attachments_max_bytes,
    )
    _vet_url_field("evaluation_url", str(brief.evaluation_url), settings)
    key = f"task/{brief.task}/{brief.round}/{brief.nonce}"[:255]
    existing = crud.get_job_by_idempotency_key(session=session, owner_id=ADMIN_KEY_ID, key=key)
    if existing is not None:
        return existing, False
    job_input = brief.model_dump(mode="json", exclude={"secret", "attachments"})
    job_input["attachments"] = [
        {
            "name": attachment.name,
            "media_type": attachment.media_type,
            "data_b64": base64.b64encode(attachment.content).decode(),
        }
        for attachment in attachments
    ]
    job = Job(
        kind="app",
        input=job_input,
        owner_id=ADMIN_KEY_ID,
        idempotency_key=key,
        request_id=request_id,
        max_attempts=settings.job_max_attempts,
    )
    return _insert_once(session, job)


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
    local_cache.changed(Cached.api_keys)
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
        secret = crud.set_signing_secret(session=session, key_id=api_key.id, secret=new_secret())
        local_cache.changed(Cached.api_keys)
        return secret
    return api_key.webhook_secret


def notify_progress(*, session: Session, delivery_id: str) -> dict[str, Any]:
    """Where an app build's evaluation callback stands: its status and every attempt."""
    delivery = crud.get_delivery(session=session, delivery_id=delivery_id)
    if delivery is None:
        return {}
    attempts = crud.attempts_of(session=session, delivery_ids=[delivery_id])[delivery_id]
    return {
        "status": delivery.status,
        "attempts": [
            {
                "number": attempt.number,
                "attempted_at": attempt.attempted_at.isoformat(),
                "status_code": attempt.status_code,
                "outcome": attempt.outcome,
                "error": attempt.error,
            }
            for attempt in attempts
        ],
    }


# The state a job's webhook column shows: its least settled delivery's.
_DELIVERY_STATE_ORDER = (
    DeliveryStatus.failed,
    DeliveryStatus.delivering,
    DeliveryStatus.pending,
    DeliveryStatus.succeeded,
)


def webhook_states(*, session: Session, job_ids: list[str]) -> dict[str, str | None]:
    """Each job's webhook delivery state: failed, delivering, pending or succeeded (the least
    settled of its deliveries), or None for a job without deliveries."""
    statuses = crud.delivery_statuses_of(session=session, job_ids=job_ids)
    return {
        job_id: next((state.value for state in _DELIVERY_STATE_ORDER if state in found), None)
        for job_id, found in statuses.items()
    }


ACTIVE_MODEL = "active_model"  # the runtime setting that overrides KILN_DEFAULT_MODEL


def same_model(a: str, b: str) -> bool:
    """Whether two names mean one model (Ollama names without a tag mean `:latest`)."""
    return (a if ":" in a else f"{a}:latest") == (b if ":" in b else f"{b}:latest")


def active_model(*, session: Session, settings: Settings) -> str:
    """The model a job that names none runs: the admin's switch, else KILN_DEFAULT_MODEL."""

    def read() -> str:
        switched = crud.get_runtime_setting(session=session, name=ACTIVE_MODEL)
        return switched or settings.default_model

    return RUNTIME_SETTINGS.load(ACTIVE_MODEL, read) or settings.default_model


def switch_model(*, session: Session, model: str) -> str:
    """Make `model` the active one, if a live GPU worker can serve it; 404 otherwise."""
    served = next((name for name in servable_models() if same_model(name, model)), None)
    if served is None:
        raise ModelNotFound(f"no live worker serves the model {model!r}; pull it first")
    crud.set_runtime_setting(session=session, name=ACTIVE_MODEL, value=served)
    local_cache.changed(Cached.runtime_settings)
    return served


def submit_model_job(
    *,
    session: Session,
    settings: Settings,
    api_key: ApiKey,
    kind: Literal["model_pull", "model_delete"],
    model: str,
    request_id: str | None,
) -> Job:
    """Queue a pull or delete of `model`; the built-in and the active model are never deleted."""
    if kind == "model_delete":
        if same_model(model, settings.default_model):
            raise Conflict(
                f"{model!r} is the built-in model (KILN_DEFAULT_MODEL)", code="builtin_model"
            )
        if same_model(model, active_model(session=session, settings=settings)):
            raise Conflict(f"{model!r} is the active model; switch first", code="active_model")
    job = Job(
        kind=kind,
        input={"model": model},
        owner_id=api_key.id,
        request_id=request_id,
        max_attempts=settings.job_max_attempts,
    )
    return _insert_once(session, job)[0]
