"""Data access: every read and write of Kiln's tables goes through these functions."""

import hashlib
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, update
from sqlmodel import Session, col, select

from shared.models import ApiKey, Job, utcnow
from shared.states import JobStatus, sources_of

KEY_PREFIX = "kiln_"  # every API key starts with it, so scanners recognise leaked keys
ADMIN_KEY_ID = "admin"  # the key bootstrapped from KILN_ADMIN_API_KEY


def hash_key(key: str) -> str:
    """The stored form of an API key (keys are random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(*, session: Session, name: str, is_admin: bool = False) -> tuple[ApiKey, str]:
    """Store a new key and return it with its secret, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(
        id="key_" + secrets.token_hex(8),
        name=name,
        key_hash=hash_key(key),
        prefix=key[:9],
        is_admin=is_admin,
    )
    session.add(api_key)
    session.commit()
    return api_key, key


def ensure_admin_key(*, session: Session, key: str) -> ApiKey:
    """Create or update the admin key row so that `key` authenticates as the admin."""
    admin = session.get(ApiKey, ADMIN_KEY_ID)
    if admin is None:
        admin = ApiKey(id=ADMIN_KEY_ID, name="admin", key_hash="", prefix="", is_admin=True)
    admin.key_hash, admin.prefix, admin.revoked_at = hash_key(key), key[:9], None
    session.add(admin)
    session.commit()
    return admin


def get_active_key(*, session: Session, key: str) -> ApiKey | None:
    """The unrevoked key whose secret is `key`."""
    statement = select(ApiKey).where(
        ApiKey.key_hash == hash_key(key), col(ApiKey.revoked_at).is_(None)
    )
    return session.exec(statement).first()


def list_api_keys(*, session: Session) -> list[ApiKey]:
    """Every key, oldest first."""
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.created_at))))


def revoke_api_key(*, session: Session, key_id: str) -> ApiKey | None:
    """Mark a key revoked; it stops authenticating at once."""
    api_key = session.get(ApiKey, key_id)
    if api_key is not None and api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        session.add(api_key)
        session.commit()
    return api_key


def insert_job(*, session: Session, job: Job) -> Job:
    """Write a new job row; raises IntegrityError when its idempotency key is taken."""
    session.add(job)
    session.commit()
    return job


def get_job(*, session: Session, job_id: str, owner_id: str | None = None) -> Job | None:
    """The job, if it exists and (when `owner_id` is given) belongs to that owner."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or (owner_id is not None and job.owner_id != owner_id):
        return None
    return job


def get_job_by_idempotency_key(*, session: Session, owner_id: str, key: str) -> Job | None:
    """The job an owner created with this idempotency key."""
    statement = select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key)
    return session.exec(statement).first()


def list_jobs(
    *,
    session: Session,
    owner_id: str | None,
    status: JobStatus | None = None,
    kind: str | None = None,
    before: str | None = None,
    limit: int = 20,
) -> list[Job]:
    """Jobs newest first; `before` is the id of the last job of the previous page."""
    statement = select(Job).order_by(col(Job.id).desc()).limit(limit)
    if owner_id is not None:
        statement = statement.where(Job.owner_id == owner_id)
    if status is not None:
        statement = statement.where(Job.status == status)
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    if before is not None:
        statement = statement.where(col(Job.id) < before)
    return list(session.exec(statement))


def transition_job(
    *,
    session: Session,
    job_id: str,
    to: JobStatus,
    expected_attempt: int | None = None,
    **values: Any,
) -> bool:
    """Move a job to `to` if its status allows it (and it is on `expected_attempt`, if given).

    The update is conditional, so of two racing writers exactly one wins; the loser gets False.
    """
    statement = (
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status).in_(sources_of(to)))
        .values(status=to, **values)
    )
    if expected_attempt is not None:
        statement = statement.where(col(Job.attempt) == expected_attempt)
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    session.commit()
    return result.rowcount == 1


def renew_lease(*, session: Session, job_id: str, attempt: int, until: datetime) -> bool:
    """Extend a running job's lease; False when the worker no longer owns the job."""
    statement = (
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == JobStatus.running,
            col(Job.attempt) == attempt,
        )
        .values(lease_expires_at=until)
    )
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    session.commit()
    return result.rowcount == 1


def set_progress(*, session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> None:
    """Record a running job's latest progress."""
    statement = (
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == JobStatus.running,
            col(Job.attempt) == attempt,
        )
        .values(progress=progress)
    )
    session.execute(statement)
    session.commit()


def queued_jobs_before(*, session: Session, before: datetime, limit: int) -> list[Job]:
    """Queued jobs that entered the queue before `before`, oldest first."""
    statement = (
        select(Job)
        .where(Job.status == JobStatus.queued, col(Job.queued_at) < before)
        .order_by(col(Job.queued_at))
        .limit(limit)
    )
    return list(session.exec(statement))


def jobs_with_expired_lease(*, session: Session, now: datetime, limit: int) -> list[Job]:
    """Running jobs whose worker stopped renewing the lease."""
    statement = (
        select(Job)
        .where(Job.status == JobStatus.running, col(Job.lease_expires_at) < now)
        .limit(limit)
    )
    return list(session.exec(statement))
