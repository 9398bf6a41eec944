"""Publishing a job's message to its queue (task id = job id)."""

import logging

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from shared import keys
from shared.broker import get_redis
from shared.celery_app import (
    QUEUE_CALLBACKS,
    QUEUE_FOR_TASK,
    TASK_DELIVER,
    TASK_FOR_KIND,
    celery_app,
)

log = logging.getLogger(__name__)


def enqueue(job_id: str, kind: str) -> bool:
    """Publish the job's message; False when the broker is unreachable.

    A job that could not be published stays queued in the database, and the reconciler
    publishes it once Redis answers again, so a failure here loses nothing.
    """
    task = TASK_FOR_KIND[kind]
    try:
        celery_app.send_task(
            task, args=[job_id], task_id=job_id, queue=QUEUE_FOR_TASK[task], retry=False
        )
        get_redis().sadd(keys.ENQUEUED_SET, job_id)
    except (RedisError, OperationalError, OSError) as exc:
        log.warning("could not publish job %s, the reconciler will: %s", job_id, exc)
        return False
    return True


def dispatch_delivery(delivery_id: str) -> bool:
    """Publish a webhook delivery's message; the reconciler covers a failure here too."""
    try:
        celery_app.send_task(TASK_DELIVER, args=[delivery_id], queue=QUEUE_CALLBACKS, retry=False)
    except (RedisError, OperationalError, OSError) as exc:
        log.warning("could not publish delivery %s, the reconciler will: %s", delivery_id, exc)
        return False
    return True
