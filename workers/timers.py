"""Delayed calls on one background thread per worker process, instead of a thread per job."""

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Timer:
    """Runs each callback once its delay has passed, in order, on one daemon thread.

    The thread starts with the first call in each process, so a forked pool process gets its
    own. A callback cannot be withdrawn: its owner makes it do nothing once it is no longer
    wanted. A callback that raises is logged; the others still run.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._ready = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()  # ties run in the order they were asked for
        self._pid: int | None = None  # the process whose thread runs the callbacks
        os.register_at_fork(after_in_child=self._forget)

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        entry = (time.monotonic() + delay, next(self._order), callback)
        with self._ready:
            heapq.heappush(self._due, entry)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._due or (wait := self._due[0][0] - time.monotonic()) > 0:
                    self._ready.wait(None if not self._due else wait)
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception:
                log.exception("a delayed call on %s failed", self.name)

    def _forget(self) -> None:
        # The parent's thread did not come along, and its lock may have been held mid-fork.
        self._ready = threading.Condition()
        self._due = []
        self._pid = None
