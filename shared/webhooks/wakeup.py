"""The callbacks queue's wake-up: while one waits in the queue, no other is published, so a
backlog of N deliveries costs N / batch tasks rather than N.

A delivery committed after a worker took the wake-up still gets one: the worker clears the key
before it claims, so the delivery's dispatch either finds the key free and publishes, or finds
one set later, whose worker claims after the delivery's commit.
"""

import logging

from redis.exceptions import RedisError

from shared.broker import get_redis

log = logging.getLogger(__name__)

WAKEUP_KEY = "kiln:deliveries:wakeup"  # set while a wake-up message is on its way
WAKEUP_TTL_S = 10  # how long a wake-up lost with its worker holds back new ones


def take() -> bool:
    """Reserve the wake-up; True when the caller should publish it."""
    return bool(get_redis().set(WAKEUP_KEY, 1, nx=True, ex=WAKEUP_TTL_S))


def clear() -> None:
    """A worker took the wake-up: the next due delivery may publish another."""
    try:
        get_redis().delete(WAKEUP_KEY)
    except RedisError:
        # The key expires on its own; until then the reconciler's wake-ups are the ones held back.
        log.warning("could not clear the webhook wake-up key")
