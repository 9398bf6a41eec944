"""Every Redis key Kiln writes besides Celery's own queues, in one place."""

ENQUEUED_SET = "kiln:enqueued"
"""Ids of queued jobs whose message was published; a flushed Redis empties it, which is how the
reconciler learns that a queued job's message is gone."""

RECONCILER_LOCK = "kiln:reconciler:lock"
"""Held by the one reconciler that is active; others wait for it to expire."""

WORKER_HEARTBEAT_PREFIX = "kiln:worker:"
"""`kiln:worker:<hostname>` → the queues that worker consumes; expires unless refreshed."""


def job_events(job_id: str) -> str:
    """The stream of one job's events (status changes, progress, tokens)."""
    return f"kiln:job:{job_id}:events"


def job_cancel(job_id: str) -> str:
    """Set when a running job is canceled; its worker polls it between tokens."""
    return f"kiln:job:{job_id}:cancel"


def worker_heartbeat(hostname: str) -> str:
    return WORKER_HEARTBEAT_PREFIX + hostname
