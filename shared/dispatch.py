"""Publishing messages: a job's to its queue (task id = job id), webhooks' wake-up to `callbacks`.

A message that could not be published loses nothing: the job or delivery stays pending in the
database, and the reconciler publishes it once Redis answers again.
"""

import logging
import uuid
from functools import lru_cache
from typing import Any

import redis
from redis.exceptions import RedisError

from shared import events, keys
from shared.broker import get_redis
from shared.models import Job
from shared.queues import QUEUE_FOR_TASK, TASK_DELIVER, TASK_FOR_KIND
from shared.task_messages import TaskMessages
from shared.webhooks import wakeup

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
    return _send(pipe, f"job {job.id}")


def dispatch_delivery(delivery_id: str) -> bool:
    """Wake the callbacks workers for a due delivery, unless a wake-up is already on its way:
    each one sends a batch of whatever is due (`delivery_id` only names who asked)."""
    try:
        if not wakeup.take():
            return True
    except (RedisError, OSError) as exc:
        log.warning("could not wake the callbacks workers; the reconciler will: %s", exc)
        return False
    if _publish(TASK_DELIVER, [delivery_id], f"a wake-up for delivery {delivery_id}"):
        return True
    wakeup.clear()  # so that the reconciler's next wake-up is not held back
    return False


def dispatch_step(task: str, job_id: str, attempt: int) -> bool:
    """Publish the next step of a job's attempt; a lost one is retried via the job's lease."""
    return _publish(task, [job_id, attempt], f"the next step of job {job_id}")


def _publish(task: str, args: list[Any], what: str) -> bool:
    pipe = get_redis().pipeline(transaction=False)
    queue = QUEUE_FOR_TASK[task]
    _messages().publish(pipe, task=task, task_id=str(uuid.uuid4()), args=args, queue=queue)
    return _send(pipe, what)


def _send(pipe: "redis.client.Pipeline", what: str) -> bool:
    try:
        pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not publish %s; the reconciler will: %s", what, exc)
        return False
    return True
