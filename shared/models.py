"""Database tables and the public shapes derived from them."""

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from shared.states import DeliveryStatus, JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """An opaque, URL-safe id that sorts by creation time (so `ORDER BY id` is newest-last)."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(8)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class ApiKey(SQLModel, table=True):
    """An API key; only its SHA-256 hash is stored."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)  # the key's first characters, to recognise it in lists
    is_admin: bool = False
    webhook_secret: str | None = Field(default=None, max_length=128)  # signs this key's webhooks
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiKeyPublic(SQLModel):
    """An API key as listed: never the key itself."""

    id: str
    name: str
    prefix: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(SQLModel):
    """A new API key, shown once."""

    id: str
    name: str
    key: str


class Job(SQLModel, table=True):
    """A unit of work and its durable state; the source of truth for its status."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_status_queued_at", "status", "queued_at"),
    )

    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=32)
    kind: str = Field(max_length=32)
    status: JobStatus = Field(
        default=JobStatus.queued, sa_column=Column(String(16), nullable=False)
    )
    input: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] | None = _json()
    error: dict[str, Any] | None = _json()  # {"code", "message"}
    progress: dict[str, Any] | None = _json()
    artifacts: dict[str, Any] | None = _json()  # what one step of a chained job hands the next
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    attempt: int = 1
    max_attempts: int = 3
    owner_id: str = Field(max_length=32)
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)  # the body an idempotency key saw
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_events: list[str] | None = _json()  # None: the terminal events
    webhook_gone_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # receiver said 410
    request_id: str | None = Field(default=None, max_length=128)
    worker: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    queued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


def new_delivery_id() -> str:
    return "dlv_" + new_job_id()


class Delivery(SQLModel, table=True):
    """One event of one job on its way to the job's webhook URL."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_owner_id_id", "owner_id", "id"),
    )

    id: str = Field(default_factory=new_delivery_id, primary_key=True, max_length=40)
    job_id: str = Field(max_length=32, index=True)
    owner_id: str = Field(max_length=32)
    event_id: str = Field(max_length=40)  # the `webhook-id`, the same on every attempt
    event_type: str = Field(max_length=32)
    url: str = Field(max_length=2048)
    payload: str = Field(
        sa_column=Column(Text, nullable=False)
    )  # the exact body each attempt sends
    status: DeliveryStatus = Field(
        default=DeliveryStatus.pending, sa_column=Column(String(16), nullable=False)
    )
    policy: str = Field(default="webhook", max_length=16)  # webhook | evaluation
    deadline_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # evaluation only
    attempts: int = 0  # made since the delivery (or its manual redelivery) began
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)  # while delivering
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=1024)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DeliveryAttempt(SQLModel, table=True):
    """One HTTP request of a delivery, as the delivery log shows it."""

    __tablename__ = "delivery_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(max_length=40, index=True)
    number: int
    attempted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    url: str = Field(max_length=2048)  # with any password redacted
    status_code: int | None = None
    latency_ms: float
    response_excerpt: str | None = Field(default=None, sa_column=Column(Text))  # first 1 KiB
    error: str | None = Field(default=None, max_length=1024)
    outcome: str = Field(max_length=16)  # succeeded | retry | failed | gone


class RuntimeSetting(SQLModel, table=True):
    """A setting an admin changes while Kiln runs (the active default model), kept across
    restarts; a name with no row falls back to its `KILN_*` setting."""

    __tablename__ = "runtime_settings"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=1024)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
