"""Token events on their way to a job's stream: sent at once when they come slowly, gathered
into one round trip per TOKEN_BATCH_S when they come fast."""

import threading
import time
from types import TracebackType

from shared import events
from shared.broker import get_redis

TOKEN_BATCH_S = 0.01  # the longest a token waits for others to share its round trip


class TokenSender:
    """Sends one job's tokens in order; a background thread flushes what waits."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._waiting: list[str] = []
        self._sent_at = 0.0
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"tokens-{job_id}", daemon=True)

    def __enter__(self) -> "TokenSender":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify()
        self._thread.join()
        self._flush()

    def send(self, delta: str) -> None:
        with self._lock:
            self._waiting.append(delta)
            quiet = time.monotonic() - self._sent_at >= TOKEN_BATCH_S
            if not quiet:
                self._ready.notify()
                return
        self._flush()  # the first token after a pause goes out at once

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
            time.sleep(TOKEN_BATCH_S)
            self._flush()

    def _flush(self) -> None:
        with self._sending:  # one flush at a time, so batches reach Redis in order
            with self._lock:
                deltas, self._waiting = self._waiting, []
                self._sent_at = time.monotonic()
            if deltas:
                events.append_tokens(get_redis(), self.job_id, deltas)
