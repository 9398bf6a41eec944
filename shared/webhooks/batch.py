"""What a batch of deliveries carries from its claim, through the sender, to its record."""

from dataclasses import dataclass
from datetime import datetime

from shared.states import DeliveryStatus


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery a worker holds for one attempt: the columns the attempt needs."""

    id: str
    job_id: str
    owner_id: str
    event_id: str
    event_type: str
    url: str
    payload: str
    policy: str
    deadline_at: datetime | None
    attempts: int  # made before this one


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One request as the delivery log keeps it."""

    number: int
    attempted_at: datetime
    url: str  # redacted
    status_code: int | None
    latency_ms: float
    response_excerpt: str | None
    error: str | None
    outcome: str  # succeeded | retry | failed | gone


@dataclass(frozen=True, slots=True)
class Outcome:
    """A claimed delivery's new state, and the attempt that led to it (None: not sent)."""

    delivery: ClaimedDelivery
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    finished_at: datetime | None
    attempt: AttemptRecord | None

    @property
    def gone(self) -> bool:
        """The receiver answered 410: its job's URL hears nothing more."""
        return self.attempt is not None and self.attempt.outcome == "gone"
