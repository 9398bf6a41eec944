"""Redis connections, one pool per process and per flavour (blocking and asyncio)."""

from functools import lru_cache

import redis
import redis.asyncio

from shared.config import get_settings

SOCKET_TIMEOUT_S = 10.0  # above the longest XREAD block the SSE endpoint uses


@lru_cache
def get_redis() -> "redis.Redis":
    """This process's blocking Redis client."""
    return redis.Redis.from_url(
        get_settings().broker_url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=5
    )


@lru_cache
def get_async_redis() -> "redis.asyncio.Redis":
    """This process's asyncio Redis client (the API's event loop)."""
    return redis.asyncio.Redis.from_url(
        get_settings().broker_url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=5
    )


def reset_redis() -> None:
    """Forget clients inherited across a fork."""
    get_redis.cache_clear()
    get_async_redis.cache_clear()
