"""Celery task events, which Flower shows: a worker sends none until a monitor asks for them
(as Flower does every few seconds), then every one of them, in batches."""

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.events import EventReceiver

from tests.harness import Kiln, eventually

WORKER_EVENTS = {"task-received", "task-started", "task-succeeded"}


@pytest.fixture(scope="module")
def backend() -> str:
    # Events go through Redis only: SQLite is enough.
    return "sqlite"


@pytest.fixture(scope="module")
def kiln_env() -> dict[str, str]:
    return {}  # the template provider


class Monitor:
    """What Flower does: a Celery app that captures every event and can ask for task events."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("monitor", broker=redis_url, set_as_current=False)
        self.events: list[dict[str, Any]] = []
        self._receiver: EventReceiver | None = None
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with self.app.connection() as connection:
            self._receiver = EventReceiver(
                connection, handlers={"*": self.events.append}, app=self.app
            )
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self, kiln: Kiln) -> None:
        self._thread.start()
        # Redis fanout is PSUBSCRIBE: the receiver listens once its pattern is there.
        eventually(kiln.redis.pubsub_numpat, "the monitor listens")

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self.app.close()

    def worker_events(self, task_id: str) -> list[str]:
        return [
            event["type"]
            for event in list(self.events)
            if event.get("uuid") == task_id and event["type"] in WORKER_EVENTS
        ]

    def ask_for_events(self) -> bool:
        """True once the gpu worker answered that its task events are on."""
        replies = self.app.control.broadcast("enable_events", reply=True, timeout=2)
        return any(name.startswith("worker-gpu@") for reply in replies for name in reply)


@pytest.fixture
def monitor(kiln: Kiln) -> Iterator[Monitor]:
    watching = Monitor(kiln.redis_url)
    watching.start(kiln)
    yield watching
    watching.stop()


def test_a_worker_sends_task_events_only_once_a_monitor_asks_and_then_all_of_them(
    kiln: Kiln, monitor: Monitor
) -> None:
    key = kiln.new_key()
    unwatched = kiln.submit(key, "before anyone asked")
    assert kiln.wait_for(key, unwatched["id"])["status"] == "succeeded"

    eventually(monitor.ask_for_events, "the gpu worker turns its task events on")
    watched = kiln.submit(key, "after the monitor asked")
    assert kiln.wait_for(key, watched["id"])["status"] == "succeeded"

    seen = eventually(
        lambda: (types := monitor.worker_events(watched["id"])) and set(types) == WORKER_EVENTS,
        "the three task events of the watched job",
    )
    assert seen
    assert monitor.worker_events(watched["id"]) == [
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    # A worker sends its events in order, so had it sent any for the first job they would have
    # come before these.
    assert monitor.worker_events(unwatched["id"]) == []
