"""Data access: every read and write of Kiln's tables goes through these functions."""

import hashlib
import secrets
from dataclasses import asdict, fields
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    RowMapping,
    Table,
    Update,
    and_,
    bindparam,
    insert,
    inspect,
    or_,
    update,
)
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlmodel import Session, col, select

from shared.models import ApiKey, Delivery, DeliveryAttempt, Job, RuntimeSetting, utcnow
from shared.states import DeliveryStatus, JobStatus, sources_of
from shared.webhooks.batch import ClaimedDelivery, Outcome
from shared.webhooks.signing import new_secret

Row = TypeVar("Row", Job, Delivery)

KEY_PREFIX = "kiln_"  # every API key starts with it, so scanners recognise leaked keys
ADMIN_KEY_ID = "admin"  # the key bootstrapped from KILN_ADMIN_API_KEY

# Hot writes use Core statements on the tables (webhook batches: one round trip for many rows).
_DELIVERIES: Table = Delivery.__table__  # type: ignore[attr-defined]
_ATTEMPTS: Table = DeliveryAttempt.__table__  # type: ignore[attr-defined]
_JOBS: Table = Job.__table__  # type: ignore[attr-defined]
_INSERT_JOB = insert(_JOBS)
_JOB_COLUMNS = [(field.key, field.columns[0].key) for field in inspect(Job).column_attrs]
_JOB_COLUMN = dict(_JOB_COLUMNS)  # a field's column
_JOB_CLASS = manager_of_class(Job)
_SELECT_JOB = core_select(*_JOBS.c).where(_JOBS.c.id == bindparam("job_id"))
_CLAIMED_COLUMNS = [field.name for field in fields(ClaimedDelivery)]
_OUTCOME_COLUMNS = (
    "status",
    "attempts",
    "next_attempt_at",
    "last_status_code",
    "last_error",
    "finished_at",
)
_SET_OUTCOME = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("outcome_id"))
    .values({name: bindparam(f"new_{name}") for name in _OUTCOME_COLUMNS})
)


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
        webhook_secret=new_secret(),
    )
    session.add(api_key)
    session.commit()
    return api_key, key


def ensure_admin_key(*, session: Session, key: str) -> ApiKey:
    """Create or update the admin key row so that `key` authenticates as the admin.

    Several API processes start at once and each runs this: one that loses the race to insert
    the row updates the winner's instead.
    """
    for _ in range(2):
        admin = session.get(ApiKey, ADMIN_KEY_ID, populate_existing=True)
        if admin is None:
            admin = ApiKey(id=ADMIN_KEY_ID, name="admin", key_hash="", prefix="", is_admin=True)
        admin.key_hash, admin.prefix, admin.revoked_at = hash_key(key), key[:9], None
        admin.webhook_secret = admin.webhook_secret or new_secret()
        session.add(admin)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            continue
        return admin
    raise RuntimeError("could not write the admin key")


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
    insert_jobs(session=session, jobs=[job])
    return job


def insert_jobs(*, session: Session, jobs: list[Job]) -> None:
    """Write new job rows in one transaction; raises IntegrityError (and writes none) when an
    idempotency key is taken.

    Core INSERTs, with no unit of work: the submit path's write costs about a third less.
    """
    rows = [{column: getattr(job, field) for field, column in _JOB_COLUMNS} for job in jobs]
    session.connection().execute(_INSERT_JOB, rows)
    session.commit()


def get_job(*, session: Session, job_id: str, owner_id: str | None = None) -> Job | None:
    """The job as the database holds it now, if it exists and (when `owner_id` is given)
    belongs to that owner. A Core read, as `move_job`'s: over a quarter less than the ORM's,
    on the path of every poll and every call that waits for its job."""
    row = session.connection().execute(_SELECT_JOB, {"job_id": job_id}).mappings().one_or_none()
    if row is None or (owner_id is not None and row[_JOB_COLUMN["owner_id"]] != owner_id):
        return None
    return _loaded_job(row)


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
    return _newest_first(
        session, Job, before=before, limit=limit, owner_id=owner_id, status=status, kind=kind
    )


def _newest_first(
    session: Session, table: type[Row], *, before: str | None, limit: int, **equal: object
) -> list[Row]:
    """A page of rows of a table whose ids sort by creation, newest first, filtered on the
    columns in `equal` whose value is not None."""
    row_id = getattr(table, "id")  # noqa: B009  (every paged table has an `id` column)
    statement = select(table).order_by(row_id.desc()).limit(limit)
    for column, value in equal.items():
        if value is not None:
            statement = statement.where(getattr(table, column) == value)
    if before is not None:
        statement = statement.where(row_id < before)
    return list(session.exec(statement))


def move_job(
    *,
    session: Session,
    job_id: str,
    to: JobStatus,
    expected_attempt: int | None = None,
    **values: Any,
) -> Job | None:
    """Move a job to `to` if its status allows it (and it is on `expected_attempt`, if given);
    the job as the update left it, or None if it lost.

    The update is conditional, so of two racing writers exactly one wins. One `UPDATE …
    RETURNING` in Core, with no ORM read; the caller commits (and may add to the transaction).
    """
    statement = _move_statement(to, tuple(values), expected_attempt is not None)
    parameters = {f"new_{field}": value for field, value in values.items()}
    parameters.update(match_id=job_id, match_attempt=expected_attempt)
    row = session.connection().execute(statement, parameters).mappings().one_or_none()
    if row is None:
        return None
    return _loaded_job(row)


def _loaded_job(row: RowMapping) -> Job:
    """The job a row holds, built the way the ORM builds what it loads: the columns' types
    already gave each value its type, so it is not validated again (a third of the cost)."""
    job: Job = _JOB_CLASS.new_instance()
    for field, column in _JOB_COLUMNS:
        set_committed_value(job, field, row[column])
    set_committed_value(job, "status", JobStatus(row[_JOB_COLUMN["status"]]))
    return job


@lru_cache(maxsize=64)
def _move_statement(to: JobStatus, fields: tuple[str, ...], on_attempt: bool) -> Update:
    """The statement of a move to `to` that sets `fields`, built once per shape: a statement
    object used again keeps its SQL and its cache key, which otherwise cost more than SQLite.
    Parameter names differ from every column's, which in an UPDATE would mean a new value."""
    statement = (
        update(_JOBS)
        .where(_JOBS.c.id == bindparam("match_id"), _any_status(sources_of(to)))
        .values(status=to, **{_JOB_COLUMN[field]: bindparam(f"new_{field}") for field in fields})
        .returning(*_JOBS.c)
    )
    if on_attempt:
        statement = statement.where(_JOBS.c.attempt == bindparam("match_attempt"))
    return statement


def _any_status(statuses: list[JobStatus]) -> ColumnElement[bool]:
    """`status IN (…)` as plain comparisons: an IN list is rendered again on every execution."""
    return or_(*(_JOBS.c.status == status for status in statuses))


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


def set_progress(*, session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> bool:
    """Record a running job's latest progress (uncommitted); False if the job moved on."""
    statement = (
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == JobStatus.running,
            col(Job.attempt) == attempt,
        )
        .values(progress=progress)
    )
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount == 1


def hand_off(
    *, session: Session, job_id: str, attempt: int, artifacts: dict[str, Any], lease_until: datetime
) -> bool:
    """Store what the next step needs and hold the lease until it starts; False if the job
    moved on (canceled, or retried elsewhere)."""
    statement = (
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == JobStatus.running,
            col(Job.attempt) == attempt,
        )
        .values(artifacts=artifacts, lease_expires_at=lease_until)
    )
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    session.commit()
    return result.rowcount == 1


def queued_jobs_before(*, session: Session, before: datetime, limit: int) -> list[Job]:
    """Queued jobs that entered the queue before `before`, oldest first."""
    statement = (
        select(Job)
        .where(Job.status == JobStatus.queued, col(Job.queued_at) < before)
        .order_by(col(Job.queued_at))
        .limit(limit)
    )
    return list(session.exec(statement))


def queued_jobs_among(*, session: Session, job_ids: list[str]) -> list[Job]:
    """Those of `job_ids` that are still queued."""
    statement = select(Job).where(Job.status == JobStatus.queued, col(Job.id).in_(job_ids))
    return list(session.exec(statement))


def jobs_with_expired_lease(*, session: Session, now: datetime, limit: int) -> list[Job]:
    """Running jobs whose worker stopped renewing the lease."""
    statement = (
        select(Job)
        .where(Job.status == JobStatus.running, col(Job.lease_expires_at) < now)
        .limit(limit)
    )
    return list(session.exec(statement))


def signing_secrets(*, session: Session, owner_ids: set[str]) -> dict[str, str | None]:
    """The webhook signing secret of each of these API keys, in one query."""
    statement = select(ApiKey.id, ApiKey.webhook_secret).where(col(ApiKey.id).in_(owner_ids))
    return dict(session.exec(statement).all())


def set_signing_secret(*, session: Session, key_id: str, secret: str) -> str:
    """Give a key a new webhook signing secret."""
    session.execute(update(ApiKey).where(col(ApiKey.id) == key_id).values(webhook_secret=secret))
    session.commit()
    return secret


def get_delivery(
    *, session: Session, delivery_id: str, owner_id: str | None = None
) -> Delivery | None:
    """The delivery, if it exists and (when `owner_id` is given) belongs to that owner."""
    delivery = session.get(Delivery, delivery_id, populate_existing=True)
    if delivery is None or (owner_id is not None and delivery.owner_id != owner_id):
        return None
    return delivery


def list_deliveries(
    *,
    session: Session,
    owner_id: str | None,
    job_id: str | None = None,
    status: DeliveryStatus | None = None,
    before: str | None = None,
    limit: int = 100,
) -> list[Delivery]:
    """Deliveries newest first, of one job or of all an owner's jobs."""
    return _newest_first(
        session,
        Delivery,
        before=before,
        limit=limit,
        owner_id=owner_id,
        job_id=job_id,
        status=status,
    )


def attempts_of(*, session: Session, delivery_ids: list[str]) -> dict[str, list[DeliveryAttempt]]:
    """The attempts of each delivery, oldest first."""
    found: dict[str, list[DeliveryAttempt]] = {delivery_id: [] for delivery_id in delivery_ids}
    if not delivery_ids:
        return found
    statement = (
        select(DeliveryAttempt)
        .where(col(DeliveryAttempt.delivery_id).in_(delivery_ids))
        .order_by(col(DeliveryAttempt.id))
    )
    for attempt in session.exec(statement):
        found[attempt.delivery_id].append(attempt)
    return found


def _update_delivery(
    session: Session, delivery_id: str, sources: list[DeliveryStatus], **values: Any
) -> bool:
    statement = (
        update(Delivery)
        .where(col(Delivery.id) == delivery_id, col(Delivery.status).in_(sources))
        .values(**values)
    )
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount == 1


def _due(now: datetime) -> ColumnElement[bool]:
    """Pending and due: a new (or redelivered) one at once, a retry at its scheduled time."""
    return and_(
        _DELIVERIES.c.status == DeliveryStatus.pending,
        or_(_DELIVERIES.c.attempts == 0, _DELIVERIES.c.next_attempt_at <= now),
    )


def claim_due_deliveries(
    *, session: Session, now: datetime, until: datetime, limit: int
) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries for one batch in one statement, oldest first.

    `until` is the claim's lease and its fencing token: two claims never return the same row
    (PostgreSQL skips rows another claim has locked; SQLite runs one writer at a time), and only
    the holder of `until` can record the outcome.
    """
    chosen = (
        core_select(_DELIVERIES.c.id)
        .where(_due(now))
        .order_by(_DELIVERIES.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(_DELIVERIES)
        .where(_DELIVERIES.c.id.in_(chosen.scalar_subquery()), _due(now))
        .values(status=DeliveryStatus.delivering, locked_until=until)
        .returning(*(_DELIVERIES.c[name] for name in _CLAIMED_COLUMNS))
    )
    claimed = [ClaimedDelivery(**row._mapping) for row in session.execute(statement)]
    session.commit()
    return sorted(claimed, key=lambda delivery: delivery.id)


def first_due_delivery(*, session: Session, now: datetime) -> str | None:
    """The id of some due delivery, or None when none is."""
    return session.execute(core_select(_DELIVERIES.c.id).where(_due(now)).limit(1)).scalar()


def extend_claims(
    *, session: Session, delivery_ids: list[str], token: datetime, until: datetime
) -> None:
    """Move a batch's lease (and fencing token) to `until`, for the rows it still holds."""
    session.execute(
        update(_DELIVERIES).where(_held(delivery_ids, token)).values(locked_until=until)
    )
    session.commit()


def _held(delivery_ids: list[str], token: datetime) -> ColumnElement[bool]:
    return and_(
        _DELIVERIES.c.id.in_(delivery_ids),
        _DELIVERIES.c.status == DeliveryStatus.delivering,
        _DELIVERIES.c.locked_until == token,
    )


def record_outcomes(
    *, session: Session, token: datetime, outcomes: list[Outcome], gone_reason: str
) -> list[Outcome]:
    """Store a batch's attempts and its deliveries' new states in one transaction, for the rows
    the batch still holds; a 410 also stops its job's URL. Returns the outcomes stored."""
    if not outcomes:
        return []
    released = session.execute(
        update(_DELIVERIES)
        .where(_held([outcome.delivery.id for outcome in outcomes], token))
        .values(locked_until=None)
        .returning(_DELIVERIES.c.id)
    )
    held = set(released.scalars())
    stored = [outcome for outcome in outcomes if outcome.delivery.id in held]
    if stored:
        session.execute(_SET_OUTCOME, [_outcome_values(outcome) for outcome in stored])
    attempts = [
        {"delivery_id": outcome.delivery.id, **asdict(outcome.attempt)}
        for outcome in stored
        if outcome.attempt is not None
    ]
    if attempts:
        session.execute(insert(_ATTEMPTS), attempts)
    for job_id, url in {(o.delivery.job_id, o.delivery.url) for o in stored if o.gone}:
        _stop_deliveries_to(session, job_id, url, gone_reason)
    session.commit()
    return stored


def _outcome_values(outcome: Outcome) -> dict[str, Any]:
    values = {name: getattr(outcome, name) for name in _OUTCOME_COLUMNS}
    return {"outcome_id": outcome.delivery.id, **{f"new_{k}": v for k, v in values.items()}}


def _stop_deliveries_to(session: Session, job_id: str, url: str, reason: str) -> None:
    """The receiver said 410: mark the job's URL gone and fail its pending deliveries."""
    session.execute(update(Job).where(col(Job.id) == job_id).values(webhook_gone_at=utcnow()))
    session.execute(
        update(Delivery)
        .where(
            col(Delivery.job_id) == job_id,
            col(Delivery.url) == url,
            col(Delivery.status) == DeliveryStatus.pending,
        )
        .values(status=DeliveryStatus.failed, last_error=reason, finished_at=utcnow())
    )


def redeliver(*, session: Session, delivery_id: str, republish_at: datetime) -> bool:
    """Start a finished delivery over: pending, its attempt count back at zero."""
    restarted = _update_delivery(
        session,
        delivery_id,
        [DeliveryStatus.succeeded, DeliveryStatus.failed],
        status=DeliveryStatus.pending,
        attempts=0,
        next_attempt_at=republish_at,
        finished_at=None,
    )
    session.commit()
    return restarted


def release_stalled_deliveries(*, session: Session, now: datetime) -> int:
    """Deliveries whose worker died mid-attempt become pending again, due at once."""
    statement = (
        update(Delivery)
        .where(col(Delivery.status) == DeliveryStatus.delivering, col(Delivery.locked_until) < now)
        .values(status=DeliveryStatus.pending, locked_until=None, next_attempt_at=now)
    )
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    session.commit()
    return int(result.rowcount)


def unfinished_rounds_before(*, session: Session, task: str, job_id: str) -> list[Job]:
    """Earlier app jobs of the same task that are still queued or running."""
    prefix = f"task/{task}/".replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    statement = select(Job).where(
        Job.kind == "app",
        col(Job.idempotency_key).like(prefix + "%", escape="\\"),
        col(Job.status).in_([JobStatus.queued, JobStatus.running]),
        col(Job.id) < job_id,
    )
    return list(session.exec(statement))


def get_runtime_setting(*, session: Session, name: str) -> str | None:
    """The value an admin set for `name` at run time, or None if none was set."""
    setting = session.get(RuntimeSetting, name, populate_existing=True)
    return setting.value if setting is not None else None


def set_runtime_setting(*, session: Session, name: str, value: str) -> None:
    """Store `value` for `name`; of two admins setting it at once, the later write wins."""
    for _ in range(2):
        setting = session.get(RuntimeSetting, name, populate_existing=True)
        if setting is None:
            setting = RuntimeSetting(name=name, value=value)
        setting.value, setting.updated_at = value, utcnow()
        session.add(setting)
        try:
            session.commit()
            return
        except IntegrityError:
            session.rollback()  # the other insert won the race; update its row instead
    raise RuntimeError(f"could not store the runtime setting {name!r}")


def delivery_statuses_of(
    *, session: Session, job_ids: list[str]
) -> dict[str, list[DeliveryStatus]]:
    """The status of every delivery of each job (the jobs page's webhook column)."""
    found: dict[str, list[DeliveryStatus]] = {job_id: [] for job_id in job_ids}
    if not job_ids:
        return found
    statement = select(Delivery.job_id, Delivery.status).where(col(Delivery.job_id).in_(job_ids))
    for job_id, status in session.exec(statement):
        found[job_id].append(DeliveryStatus(status))
    return found
