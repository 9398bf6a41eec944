"""Announcing a change to data that API processes keep cached (`api.local_cache`).

Whoever commits such a change announces it on a Redis channel; every API process drops its
copies at once. An announcement that cannot be sent is logged: the caches then catch up when
their entries expire.
"""

import logging
from enum import StrEnum

from redis.exceptions import RedisError

from shared import keys
from shared.broker import get_redis

log = logging.getLogger(__name__)


class Cached(StrEnum):
    """What the API processes cache, each announced by its name when it changes."""

    api_keys = "api_keys"  # a key revoked or its webhook secret rotated
    runtime_settings = "runtime_settings"  # an admin switched the active model


def announce(changed: Cached) -> None:
    """Tell every API process that `changed` changed."""
    try:
        get_redis().publish(keys.CHANGES_CHANNEL, changed.value)
    except RedisError:
        log.warning("could not announce a change of %s; caches catch up as entries expire", changed)
