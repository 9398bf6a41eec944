"""Every Redis key Kiln writes besides Celery's own queues, in one place."""

ENQUEUED_SET = "kiln:enqueued"
"""Ids of queued jobs whose message was published; a flushed Redis empties it, which is how the
reconciler learns that a queued job's message is gone."""

RECONCILER_LOCK = "kiln:reconciler:lock"
"""Held by the one reconciler that is active; others wait for it to expire."""

WORKER_HEARTBEAT_PREFIX = "kiln:worker:"
"""`kiln:worker:<hostname>` → a hash: what that worker announces (its queues…) and the job it
runs now (see `shared.registry`); expires unless refreshed."""


def job_events(job_id: str) -> str:
    """The stream of one job's events (status changes, progress, tokens)."""
    return f"kiln:job:{job_id}:events"


def job_cancel(job_id: str) -> str:
    """Set when a running job is canceled; its worker polls it between tokens."""
    return f"kiln:job:{job_id}:cancel"


def worker_heartbeat(hostname: str) -> str:
    return WORKER_HEARTBEAT_PREFIX + hostname


LLM_CACHE_PREFIX = "kiln:llm-cache:"
"""`kiln:llm-cache:<sha256 of the request>` → a finished completion's result (JSON), with a TTL."""


def usage_day(key_id: str, day: str) -> str:
    """A hash of one API key's counts on one UTC day (`YYYY-MM-DD`): requests and tokens."""
    return f"kiln:usage:{key_id}:{day}"


def rate_window(key_id: str, measure: str, minute: int) -> str:
    """What one API key used (`requests` or `tokens`) in one minute since the epoch."""
    return f"kiln:limit:{key_id}:{measure}:{minute}"


def gateway_history(key_id: str) -> str:
    """The newest `/completion` calls of one API key, newest first, capped."""
    return f"kiln:history:{key_id}"


def auth_failures(client: str, minute: int) -> str:
    """Failed authentications from one client address in one minute (a counter)."""
    return f"kiln:authfail:{client}:{minute}"


# kombu's Redis transport keeps the messages workers reserved but have not acknowledged in a
# hash, with the time each was reserved in a sorted set (its defaults, which Kiln keeps).
CELERY_UNACKED = "unacked"
CELERY_UNACKED_INDEX = "unacked_index"


def job_rescued(job_id: str) -> str:
    """Set when the reconciler republished a queued job whose reserved message went stale."""
    return f"kiln:rescued:{job_id}"


CHANGES_CHANNEL = "kiln:changes"
"""Pub/sub: the name of what changed (`shared.changes`), so API processes drop cached copies."""
