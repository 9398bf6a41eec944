"""The worker's consumer: Celery's own, except that task events go out in batches on a timer and
the event loop's timer sheds the entries Celery cancels."""

import heapq
import threading
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

EVENT_FLUSH_S = 0.1  # the longest a task event waits to share a message with later ones
TIMER_SWEEP_S = 60.0  # how often cancelled entries leave the event loop's timer


class Consumer(CeleryConsumer):  # type: ignore[misc]  # Celery ships no type hints
    """Two changes to Celery's consumer, both about its main process.

    Task events (for Flower): Celery sends what its buffer holds on the next turn of the event
    loop, under load one message per event, which cost the main process more than anything else
    it does. Here the buffer goes EVENT_FLUSH_S after its first event (or once it holds Celery's
    limit of 24), so Flower hears of a task at most that late.

    The timer: each task sets a soft and a hard time-limit entry on the loop's timer and cancels
    both when it ends, but a cancelled entry stays in the timer's heap until its deadline, 30
    minutes on; at 30 jobs a second that is ~50 MiB that only a steady RSS climb reveals (the
    soak showed it). Every TIMER_SWEEP_S the heap is rebuilt without them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flush_lock = threading.Lock()  # events also come from a threads pool's threads
        self._flush_due = False
        if self.hub is not None:
            self.hub.call_repeatedly(TIMER_SWEEP_S, sweep_cancelled, self.hub.timer)

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


def sweep_cancelled(timer: Any) -> int:
    """Drop the cancelled entries of a kombu timer (on the loop's thread); how many went.

    kombu keeps its heap in `_queue` and reads it in place, so it is filtered in place.
    """
    heap = timer._queue
    kept = [item for item in heap if not item.entry.canceled]
    dropped = len(heap) - len(kept)
    if dropped:
        heap[:] = kept
        heapq.heapify(heap)
    return dropped
