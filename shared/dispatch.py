"""Publishing messages: a job's to its queue (task id = job id), a delivery's to `callbacks`.

A message that could not be published loses nothing: the job or delivery stays pending in the
database, and the reconciler publishes it once Redis answers again.
"""

import logging
import uuid
from functools import lru_cache

from redis.exceptions import RedisError

from shared import events, keys
from shared.broker import get_redis
from shared.models import Job
from shared.queues import QUEUE_CALLBACKS, QUEUE_FOR_TASK, TASK_DELIVER, TASK_FOR_KIND
from shared.task_messages import TaskMessages

log = logging.getLogger(__name__)


@lru_cache
def _messages() -> TaskMessages:
    return TaskMessages()


def enqueue(job: Job, *, announce: bool = False) -> bool:
    """Publish the job's message; with `announce`, its status event goes first, in the same
    round trip, so the stream shows `queued` before any worker can say `running`."""
    task = TASK_FOR_KIND[job.kind]
    pipe = get_redis().pipeline(transaction=False)
    if announce:
        events.queue_status(pipe, job)
    _messages().publish(pipe, task=task, task_id=job.id, args=[job.id], queue=QUEUE_FOR_TASK[task])
    pipe.sadd(keys.ENQUEUED_SET, job.id)
    try:
        pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not publish job %s, the reconciler will: %s", job.id, exc)
        return False
    return True


def dispatch_delivery(delivery_id: str) -> bool:
    """Publish a webhook delivery's message."""
    pipe = get_redis().pipeline(transaction=False)
    _messages().publish(
        pipe,
        task=TASK_DELIVER,
        task_id=str(uuid.uuid4()),
        args=[delivery_id],
        queue=QUEUE_CALLBACKS,
    )
    try:
        pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not publish delivery %s, the reconciler will: %s", delivery_id, exc)
        return False
    return True


def dispatch_step(task: str, job_id: str, attempt: int) -> bool:
    """Publish the next step of a job's attempt; a lost one is retried via the job's lease."""
    pipe = get_redis().pipeline(transaction=False)
    _messages().publish(
        pipe,
        task=task,
        task_id=str(uuid.uuid4()),
        args=[job_id, attempt],
        queue=QUEUE_FOR_TASK[task],
    )
    try:
        pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not publish the next step of job %s: %s", job_id, exc)
        return False
    return True
