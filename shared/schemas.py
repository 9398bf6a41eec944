"""Request and response bodies of the public API, and the input of each job kind."""

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from shared.models import Job
from shared.states import JobStatus


class GenerateInput(BaseModel):
    """Input of a `generate` job: one prompt, one completion."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    system: str | None = None
    model: str | None = Field(None, description="Defaults to KILN_DEFAULT_MODEL.")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend options.")
    format: dict[str, Any] | Literal["json"] | None = Field(
        None, description="A JSON schema, or `json`, to constrain the output."
    )


KIND_INPUTS: dict[str, type[BaseModel]] = {"generate": GenerateInput}
"""The input model of each job kind the API accepts."""

JobKind = Literal["generate"]


class JobCreate(BaseModel):
    """What a client submits to create a job."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    input: dict[str, Any]
    webhook_url: AnyHttpUrl | None = None
    metadata: dict[str, Any] | None = None


class JobError(BaseModel):
    """Why a job failed or was canceled."""

    code: str
    message: str


class JobURLs(BaseModel):
    """Where to follow a job."""

    get: str
    cancel: str
    events: str


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: str
    kind: str
    status: JobStatus
    input: dict[str, Any]
    result: dict[str, Any] | None
    error: JobError | None
    progress: dict[str, Any] | None
    metadata: dict[str, Any] | None
    attempt: int
    max_attempts: int
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    urls: JobURLs

    @classmethod
    def from_job(cls, job: Job, base_url: str) -> "JobPublic":
        url = f"{base_url.rstrip('/')}/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            input=job.input,
            result=job.result,
            error=JobError.model_validate(job.error) if job.error else None,
            progress=job.progress,
            metadata=job.meta,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            webhook_url=job.webhook_url,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            urls=JobURLs(get=url, cancel=f"{url}/cancel", events=f"{url}/events"),
        )


class JobList(BaseModel):
    """One page of jobs, newest first."""

    data: list[JobPublic]
    has_more: bool
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class KeyCreate(BaseModel):
    """A request for a new API key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """The one shape of every 4xx and 5xx answer."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """What the API depends on, and whether each answers."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]
    missing: list[str]
