"""What each API process keeps between requests — the callers' keys and the runtime settings —
so that a submit does not read them from the database every time.

The cache is trusted only while the process listens on the changes channel
(`shared.changes`): until it has subscribed, and whenever the connection drops, every read goes
to the database, and each (re)subscription starts from an empty cache, so a change announced
while the process was not listening is never served stale. Entries also expire after
`TTL_S`, which bounds what a change made behind Kiln's back (a hand-edited row) can serve.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from redis.exceptions import RedisError

from shared import keys
from shared.broker import get_async_redis
from shared.changes import Cached, announce

log = logging.getLogger(__name__)

TTL_S = 30.0
RESUBSCRIBE_AFTER_S = 1.0  # pause before listening again after the connection dropped
POLL_S = 5.0  # longest wait for a message before checking the connection again

T = TypeVar("T")


class LocalCache(Generic[T]):
    """Values of one kind (`what`) by name, all dropped when that kind changes anywhere.

    A value read from the database is kept only if nothing changed while it was read
    (`_generation` did not move), so a read that raced a change never outlives it.
    """

    def __init__(self, what: Cached) -> None:
        self.what = what
        self.trusted = False
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, T]] = {}
        self._generation = 0
        _CACHES.append(self)

    def get(self, name: str) -> T | None:
        """The cached value, or None when there is none (or the cache is not trusted now)."""
        entry = self._entries.get(name)
        if entry is None or not self.trusted or entry[0] < time.monotonic():
            return None
        return entry[1]

    def load(self, name: str, read: Callable[[], T | None]) -> T | None:
        """The cached value, else `read()`, kept for later calls if it found something."""
        if (value := self.get(name)) is not None:
            return value
        generation = self._generation
        value = read()
        if value is not None:
            with self._lock:
                if self.trusted and generation == self._generation:
                    self._entries[name] = (time.monotonic() + TTL_S, value)
        return value

    def forget(self, *, trusted: bool | None = None) -> None:
        """Drop everything; `trusted` says whether to trust the cache from now on."""
        with self._lock:
            self._generation += 1
            self._entries = {}
            if trusted is not None:
                self.trusted = trusted


_CACHES: list[LocalCache[Any]] = []


def _forget(*, trusted: bool | None = None, what: str | None = None) -> None:
    for cache in _CACHES:
        if what is None or cache.what == what:
            cache.forget(trusted=trusted)


def changed(what: Cached) -> None:
    """Drop this process's copies of `what` at once, and tell the other processes."""
    _forget(what=what)
    announce(what)


async def follow_changes() -> None:
    """Listen for announced changes until cancelled (the API's lifespan runs this)."""
    while True:
        try:
            await _listen()
        except (RedisError, OSError) as exc:
            log.warning("lost the changes channel (%s); reading from the database", exc)
        _forget(trusted=False)
        await asyncio.sleep(RESUBSCRIBE_AFTER_S)


async def _listen() -> None:
    async with get_async_redis().pubsub() as pubsub:
        await pubsub.subscribe(keys.CHANGES_CHANNEL)
        while True:
            message = await pubsub.get_message(timeout=POLL_S)
            if message is None:
                continue
            if message["type"] == "subscribe":
                # Also after a reconnect: what was announced meanwhile is unknown.
                _forget(trusted=True)
            elif message["type"] == "message":
                data = message["data"]
                _forget(what=data.decode() if isinstance(data, bytes) else data)
