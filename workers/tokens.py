"""Token events on their way to a job's stream: sent at once when they come slowly, gathered
into one round trip per TOKEN_BATCH_S when they come fast, and the last ones with the job's
outcome."""

import threading
import time
from types import TracebackType

import redis

from shared import events
from shared.broker import get_redis
from shared.lifecycle import side_step
from workers.timers import Timer

TOKEN_BATCH_S = 0.01  # the longest a token waits for others to share its round trip
FLUSHES = Timer("kiln-tokens")  # the delayed flushes of every job of the process


class TokenSender:
    """Sends one job's tokens in order: the last ones in the round trip of the job's outcome
    (`queue_waiting`), or, when the block ends with none sent that way, on their own."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._waiting: list[str] = []
        self._sent_at = 0.0
        self._flush_due = False  # a delayed flush is on its way
        self._lock = threading.Lock()
        self._sending = threading.Lock()

    def __enter__(self) -> "TokenSender":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._flush()

    def send(self, delta: str) -> None:
        with self._lock:
            self._waiting.append(delta)
            if time.monotonic() - self._sent_at < TOKEN_BATCH_S:
                if not self._flush_due:
                    self._flush_due = True
                    FLUSHES.call_later(TOKEN_BATCH_S, self._flush)
                return
        self._flush()  # the first token after a pause goes out at once

    def _flush(self) -> None:
        with self._sending:  # one flush at a time, so batches reach Redis in order
            deltas = self._take()
            if deltas:
                # Without Redis the stream misses these tokens; the result still holds them.
                side_step(
                    lambda: events.append_tokens(get_redis(), self.job_id, deltas),
                    "could not send %d tokens of job %s to its stream",
                    len(deltas),
                    self.job_id,
                )

    def queue_waiting(self, pipe: "redis.client.Pipeline") -> None:
        """Add the tokens that wait to a pipeline the caller executes; once every token was
        given (the flow returned), so none can come after them."""
        with self._sending:  # after a flush under way, whose tokens come first
            events.queue_tokens(pipe, self.job_id, self._take())

    def _take(self) -> list[str]:
        with self._lock:
            deltas, self._waiting = self._waiting, []
            self._sent_at = time.monotonic()
            self._flush_due = False
        return deltas
