"""Kiln's errors: each carries the code and HTTP status a client sees.

KilnError                   code, message, status_code, details
├── NotFound                404 not_found
├── Unauthorized            401 unauthorized
├── Forbidden               403 forbidden
├── Conflict                409 conflict
├── IdempotencyKeyReused    422 idempotency_key_reused
├── InvalidInput            422 invalid_input
├── PayloadTooLarge         413 payload_too_large
├── ServiceUnavailable      503 service_unavailable
└── JobError                a job's failure, stored as the job's error
    ├── LLMUnavailable      llm_unavailable (transient: the backend could not be reached)
    ├── ModelNotFound       model_not_found
    ├── LLMFailed           llm_error (the backend reported a failure)
    ├── InvalidOutput       invalid_output (the reply broke the requested format, twice)
    └── LeaseExpired        lease_expired (the job's worker died too often)
JobCanceled                 not an error: the job was canceled while it ran
"""

from typing import Any


class KilnError(Exception):
    """An error with a stable code that reaches the client in the one error shape."""

    code = "internal_error"
    status_code = 500

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code


class NotFound(KilnError):
    code = "not_found"
    status_code = 404


class Unauthorized(KilnError):
    code = "unauthorized"
    status_code = 401


class Forbidden(KilnError):
    code = "forbidden"
    status_code = 403


class Conflict(KilnError):
    code = "conflict"
    status_code = 409


class IdempotencyKeyReused(KilnError):
    code = "idempotency_key_reused"
    status_code = 422


class InvalidInput(KilnError):
    code = "invalid_input"
    status_code = 422


class PayloadTooLarge(KilnError):
    code = "payload_too_large"
    status_code = 413


class ServiceUnavailable(KilnError):
    code = "service_unavailable"
    status_code = 503


class JobError(KilnError):
    """A failure that ends a job; its code and message become the job's error."""

    code = "job_failed"


class LLMUnavailable(JobError):
    code = "llm_unavailable"
    status_code = 503


class ModelNotFound(JobError):
    code = "model_not_found"
    status_code = 404


class LLMFailed(JobError):
    code = "llm_error"
    status_code = 502


class InvalidOutput(JobError):
    """The LLM's reply did not match the requested format, even after one corrected retry."""

    code = "invalid_output"
    status_code = 422


class LeaseExpired(JobError):
    code = "lease_expired"


class JobCanceled(Exception):
    """Raised inside a worker when the job it runs was canceled; the job is already terminal."""


class PublishFailed(JobError):
    """The repository or its site could not be published."""

    code = "publish_failed"
    status_code = 502
