"""The API process's job writer: submitted jobs are inserted in groups, one transaction for
whatever arrived while the previous group was being written (a group commit).

Every submit on SQLite needs the one database-wide write lock; taking it once per group instead
of once per job lets the rows of many concurrent submits share a single commit. A submit still
waits until its own row is committed, and a group in which one job's idempotency key is taken
is written again job by job, so only that job fails.
"""

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from shared import crud
from shared.db import open_session
from shared.models import Job

MAX_GROUP = 100  # rows in one transaction at most

Pending = tuple[Job, "Future[None]"]


class JobWriter:
    """One writer thread per process, started on first use (and again in a forked child)."""

    def __init__(self, sessions: Callable[[], Session] = open_session) -> None:
        self._sessions = sessions
        self._pending: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._owner_pid = 0

    def insert(self, job: Job) -> None:
        """Insert the job's row; returns once it is committed, raises what the insert raised."""
        self._ensure_running()
        written: Future[None] = Future()
        self._pending.put((job, written))
        written.result()

    def _ensure_running(self) -> None:
        if self._owner_pid == os.getpid():
            return
        with self._start_lock:
            if self._owner_pid != os.getpid():
                self._pending = queue.SimpleQueue()  # a forked child starts with its own
                threading.Thread(target=self._run, name="kiln-job-writer", daemon=True).start()
                self._owner_pid = os.getpid()

    def _run(self) -> None:
        pending = self._pending
        while True:
            group = [pending.get()]
            while len(group) < MAX_GROUP:
                try:
                    group.append(pending.get_nowait())
                except queue.Empty:
                    break
            self._write(group)

    def _write(self, group: list[Pending]) -> None:
        try:
            with self._sessions() as session:
                crud.insert_jobs(session=session, jobs=[job for job, _ in group])
        except IntegrityError as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            for pending in group:  # a key was taken: find whose, and write the others
                self._write([pending])
            return
        except Exception as exc:  # each waiting submit raises it, as its own insert would
            for _, written in group:
                written.set_exception(exc)
            return
        for _, written in group:
            written.set_result(None)


JOBS = JobWriter()
"""This process's writer."""
