"""The worker's consumer: Celery's own, except that task events go out in batches on a timer."""

import threading
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

EVENT_FLUSH_S = 0.1  # the longest a task event waits to share a message with later ones


class Consumer(CeleryConsumer):  # type: ignore[misc]  # Celery ships no type hints
    """Celery buffers task events (for Flower) and sends what the buffer holds on the next turn
    of the event loop: under load, one message per event, which cost the worker's main process
    more than anything else it does. Here the buffer is sent EVENT_FLUSH_S after its first
    event (or once it holds Celery's limit of 24), so Flower hears of a task at most that late.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flush_lock = threading.Lock()  # events also come from a threads pool's threads
        self._flush_due = False

    def on_send_event_buffered(self) -> None:
        if self.hub is None:
            return
        with self._flush_lock:
            if self._flush_due:
                return
            self._flush_due = True
        # call_soon may be called from any thread; the timer belongs to the loop's thread.
        self.hub.call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:
        self.hub.call_later(EVENT_FLUSH_S, self._flush_due_events)

    def _flush_due_events(self) -> None:
        with self._flush_lock:
            self._flush_due = False
        self._flush_events()

    def shutdown(self) -> None:
        self._flush_events()  # what is still buffered, before the dispatcher closes
        super().shutdown()
