"""Request and response bodies of the public API, and the input of each job kind."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from shared.llm.structured import check_schema
from shared.models import Delivery, DeliveryAttempt, Job
from shared.states import DeliveryStatus, JobStatus
from shared.webhooks.ssrf import redact_url


def _valid_format(value: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
    if isinstance(value, dict):
        check_schema(value)  # a bad schema is the client's error, not the worker's
    return value


OutputFormat = Annotated[dict[str, Any] | Literal["json"] | None, AfterValidator(_valid_format)]
"""A JSON schema the output must satisfy, or `json` for any JSON; checked at submit."""


class GenerateInput(BaseModel):
    """Input of a `generate` job: one prompt, one completion."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    system: str | None = None
    model: str | None = Field(None, description="Defaults to KILN_DEFAULT_MODEL.")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend options.")
    format: OutputFormat = Field(
        None, description="A JSON schema, or `json`, to constrain and validate the output."
    )
    cache: bool = Field(True, description="Use the result cache (temperature 0 or a seed).")


class ChatMessageIn(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatInput(BaseModel):
    """Input of a `chat` job: a conversation, continued by one assistant reply."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessageIn] = Field(min_length=1)
    model: str | None = Field(None, description="Defaults to KILN_DEFAULT_MODEL.")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend options.")
    format: OutputFormat = Field(
        None, description="A JSON schema, or `json`, to constrain and validate the output."
    )
    cache: bool = Field(True, description="Use the result cache (temperature 0 or a seed).")


ServiceName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9._-]+$")
]
"""A service's name as the Compose Specification allows it as a key."""


class ComposeService(BaseModel):
    """One service a `compose` job must write, with whatever the caller already fixed."""

    model_config = ConfigDict(extra="forbid")

    name: ServiceName
    image: str | None = Field(None, max_length=255)
    ports: list[str | int] = Field(default_factory=list, max_length=50)
    environment: dict[str, str | int | float | bool | None] | list[str] | None = None
    depends_on: list[str] = Field(default_factory=list, max_length=50)


class ComposeInput(BaseModel):
    """Input of a `compose` job: the services a docker compose file must define."""

    model_config = ConfigDict(extra="forbid")

    services: list[ServiceName | ComposeService] = Field(min_length=1, max_length=50)
    options: dict[str, Any] = Field(
        default_factory=dict, description="Wishes for the file (networks, volumes, …), free-form."
    )
    model: str | None = Field(None, description="Defaults to the active model.")

    @model_validator(mode="after")
    def _names_unique(self) -> "ComposeInput":
        names = [service.name for service in self.requested()]
        if len(set(names)) != len(names):
            raise ValueError("each service may be listed only once")
        return self

    def requested(self) -> list[ComposeService]:
        """Every service in its long form."""
        return [
            s if isinstance(s, ComposeService) else ComposeService(name=s) for s in self.services
        ]


class ModelInput(BaseModel):
    """Input of a `model_pull` or `model_delete` job: the model, as the backend names it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255)


KIND_INPUTS: dict[str, type[BaseModel]] = {
    "generate": GenerateInput,
    "chat": ChatInput,
    "compose": ComposeInput,
    "model_pull": ModelInput,
    "model_delete": ModelInput,
}
"""The input model of each job kind."""

JobKind = Literal["generate", "chat", "compose"]
"""The kinds `POST /v1/jobs` creates; app builds come in as briefs (`/api-endpoint`), model
pulls and deletes through the admin's `/v1/models` routes."""

AnyJobKind = Literal["generate", "chat", "compose", "app", "model_pull", "model_delete"]

WebhookEvent = Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"]


class JobCreate(BaseModel):
    """What a client submits to create a job."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    input: dict[str, Any]
    webhook_url: AnyHttpUrl | None = Field(None, description="Receives signed job events.")
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, description="Events to send; default: the terminal ones."
    )
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
    webhook_events: list[str] | None
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
            webhook_events=job.webhook_events,
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


class DeliveryAttemptPublic(BaseModel):
    """One request of a delivery, as the delivery log keeps it."""

    number: int
    attempted_at: datetime
    url: str
    status_code: int | None
    latency_ms: float
    response_excerpt: str | None = Field(description="The first 1 KiB of the response body.")
    error: str | None
    outcome: str = Field(description="succeeded, retry, failed or gone")

    @classmethod
    def from_attempt(cls, attempt: DeliveryAttempt) -> "DeliveryAttemptPublic":
        return cls.model_validate(attempt, from_attributes=True)


class DeliveryPublic(BaseModel):
    """One event's delivery to a job's webhook URL, with every attempt."""

    id: str
    job_id: str
    event_id: str = Field(description="The `webhook-id` header, the same on every attempt.")
    event_type: str
    url: str
    status: DeliveryStatus
    attempts: list[DeliveryAttemptPublic]
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_delivery(cls, delivery: Delivery, attempts: list[DeliveryAttempt]) -> "DeliveryPublic":
        pending = delivery.status == DeliveryStatus.pending
        return cls(
            id=delivery.id,
            job_id=delivery.job_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            url=redact_url(delivery.url),
            status=delivery.status,
            attempts=[DeliveryAttemptPublic.from_attempt(attempt) for attempt in attempts],
            next_attempt_at=delivery.next_attempt_at if pending else None,
            created_at=delivery.created_at,
            finished_at=delivery.finished_at,
        )


class DeliveryList(BaseModel):
    """One page of deliveries, newest first."""

    data: list[DeliveryPublic]
    has_more: bool
    next_cursor: str | None = None


class WebhookSecret(BaseModel):
    """The secret that signs this key's webhooks (Standard Webhooks, `whsec_...`)."""

    secret: str


class AttachmentIn(BaseModel):
    """An attachment of an app brief: a name and a `data:` URI."""

    name: str = Field(min_length=1, max_length=255)
    url: str = Field(min_length=5, description="A data: URI (base64 or percent-encoded).")


class TaskBrief(BaseModel):
    """An app brief as an evaluator sends it (the "LLM code deployment" task format)."""

    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    secret: str = Field(max_length=1024)
    task: str = Field(min_length=1, max_length=200)
    round: int = Field(ge=1, le=100)
    nonce: str = Field(min_length=1, max_length=200)
    brief: str = Field(min_length=1, max_length=50_000)
    checks: list[str] = Field(default_factory=list, max_length=200)
    evaluation_url: AnyHttpUrl
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=50)


class TaskAccepted(BaseModel):
    """The immediate answer to an app brief."""

    status: Literal["accepted"]
    job_id: str
    task: str
    round: int


class GenerateCall(GenerateInput):
    """`POST /v1/generate`: a `generate` job the caller waits on or streams."""

    stream: bool = Field(False, description="Server-Sent Events of tokens, then a `done` event.")


class ChatCall(ChatInput):
    """`POST /v1/chat`: a `chat` job the caller waits on or streams."""

    stream: bool = Field(False, description="Server-Sent Events of tokens, then a `done` event.")
