"""The job state machine: statuses and the transitions allowed between them."""

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life."""

    queued = "queued"  # written and enqueued; waiting for a worker (also after a retry)
    running = "running"  # claimed by a worker that holds its lease
    succeeded = "succeeded"  # finished with a result
    failed = "failed"  # finished with an error
    canceled = "canceled"  # stopped at a client's request


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})
"""Statuses that never change again."""

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.canceled, JobStatus.failed}),
    # back to queued: the worker died (lease expired) and attempts remain
    JobStatus.running: frozenset(
        {JobStatus.queued, JobStatus.succeeded, JobStatus.failed, JobStatus.canceled}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.canceled: frozenset(),
}
"""For each status, the statuses a job may move to from it."""


class DeliveryStatus(StrEnum):
    """Where one webhook event's delivery is."""

    pending = "pending"  # waiting for its next attempt (the first, or a retry)
    delivering = "delivering"  # a callback worker is sending it now
    succeeded = "succeeded"  # the receiver answered 2xx
    failed = "failed"  # refused (4xx), gone (410), blocked, or out of attempts


def sources_of(target: JobStatus) -> list[JobStatus]:
    """The statuses from which a job may move to `target`."""
    return [source for source, targets in TRANSITIONS.items() if target in targets]
