"""The sweep of the worker's event-loop timer: Celery cancels each task's time-limit entries when
the task ends, and kombu would keep them until their deadline."""

from kombu.asynchronous import Hub

from workers.consumer import sweep_cancelled


def test_the_sweep_drops_cancelled_entries_and_the_rest_still_fire() -> None:
    hub = Hub()
    fired: list[str] = []
    try:
        hub.call_later(0, fired.append, "due")
        hub.call_later(1800, fired.append, "later")
        for _ in range(100):  # what finished tasks leave behind: cancelled time limits
            hub.call_later(1800, fired.append, "cancelled").cancel()

        assert sweep_cancelled(hub.timer) == 100
        assert len(hub.timer) == 2
        assert sweep_cancelled(hub.timer) == 0

        hub.fire_timers(propagate=(Exception,))
        assert fired == ["due"]
        assert [item.eta for item in hub.timer.queue] == sorted(
            item.eta for item in hub.timer.queue
        )
    finally:
        hub.close()
