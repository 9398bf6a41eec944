"""Database tables and the public shapes derived from them."""

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, String, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from shared.states import JobStatus


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
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    attempt: int = 1
    max_attempts: int = 3
    owner_id: str = Field(max_length=32)
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)  # the body an idempotency key saw
    webhook_url: str | None = Field(default=None, max_length=2048)
    request_id: str | None = Field(default=None, max_length=128)
    worker: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    queued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
