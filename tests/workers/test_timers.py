"""The per-process timer thread that leases and token batches use instead of a thread per job."""

import multiprocessing
import threading
import time

from tests.harness import eventually
from workers.timers import Timer


def test_callbacks_run_by_due_time_and_a_failing_one_does_not_stop_the_rest() -> None:
    timer = Timer("test-timer")
    ran: list[str] = []

    def fail() -> None:
        ran.append("fail")
        raise RuntimeError("a callback that breaks")

    timer.call_later(0.2, lambda: ran.append("last"))
    timer.call_later(0.1, fail)
    timer.call_later(0.0, lambda: ran.append("first"))
    timer.call_later(0.1, lambda: ran.append("after the failure"))
    eventually(lambda: len(ran) == 4, "every callback ran")
    assert ran == ["first", "fail", "after the failure", "last"]


def test_a_callback_waits_for_its_delay() -> None:
    timer = Timer("test-timer")
    done = threading.Event()
    asked = time.monotonic()
    timer.call_later(0.3, done.set)
    assert done.wait(10)
    assert time.monotonic() - asked >= 0.3


def _call_in_child(timer: Timer, answer: "multiprocessing.Queue[str]") -> None:
    ran = threading.Event()

    def report() -> None:
        answer.put(threading.current_thread().name)
        ran.set()

    timer.call_later(0.0, report)
    ran.wait(20)  # the process ends when this returns, its daemon threads with it


def test_a_forked_process_gets_a_thread_of_its_own() -> None:
    timer = Timer("test-timer")
    parent_ran = threading.Event()
    timer.call_later(0.0, parent_ran.set)  # the parent's thread exists before the fork
    assert parent_ran.wait(10)
    answer: multiprocessing.Queue[str] = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_call_in_child, args=(timer, answer))
    child.start()
    assert answer.get(timeout=30) == "test-timer"
    child.join(timeout=30)
    assert child.exitcode == 0
