"""Keeps a running job's lease alive and notices when the job is canceled or taken away."""

import logging
import threading
from datetime import datetime, timedelta
from types import TracebackType

from shared import crud, keys
from shared.broker import get_redis
from shared.db import open_session
from shared.models import utcnow
from workers.timers import Timer

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.25  # how soon a running job notices it was canceled
CHECKS = Timer("kiln-leases")  # every lease of the process is checked on this one thread


class LeaseKeeper:
    """Checks, every CANCEL_POLL_S while the job runs, whether it was canceled, and renews the
    lease once a third of it has passed; `lost` is set once the job must stop (canceled, or
    retried elsewhere). No check runs after the keeper exits.

    The renewal is timed from the lease the row holds (`expires_at`), not from the keeper's
    start, so a process held up between its claim and its run renews at its first check."""

    def __init__(
        self, job_id: str, attempt: int, lease_seconds: float, expires_at: datetime | None
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.lease_seconds = lease_seconds
        self.lost = threading.Event()
        now = utcnow()
        if expires_at is None or expires_at > now + timedelta(seconds=lease_seconds):
            # A longer lease (a hand-off's) is cut to this keeper's at the first check, so that
            # a worker that dies in a later step is noticed as soon as in the first.
            self._renew_after = now
        else:
            self._renew_after = self._renewal_due(expires_at)
        self._checking = threading.Lock()  # held by a check; exit waits for it
        self._done = False

    def __enter__(self) -> "LeaseKeeper":
        CHECKS.call_later(CANCEL_POLL_S, self._check)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._checking:
            self._done = True

    def _check(self) -> None:
        with self._checking:
            if self._done:
                return
            try:
                if get_redis().exists(keys.job_cancel(self.job_id)):
                    self.lost.set()
                if utcnow() >= self._renew_after and not self._renew():
                    self.lost.set()
            except Exception:
                # Renewal keeps trying; if it never succeeds the lease runs out and the
                # reconciler retries the job, which is the right outcome for a cut-off worker.
                log.warning("lease renewal failed for job %s", self.job_id, exc_info=True)
        CHECKS.call_later(CANCEL_POLL_S, self._check)

    def _renewal_due(self, expires_at: datetime) -> datetime:
        return expires_at - timedelta(seconds=self.lease_seconds * 2 / 3)

    def _renew(self) -> bool:
        until = utcnow() + timedelta(seconds=self.lease_seconds)
        with open_session() as session:
            renewed = crud.renew_lease(
                session=session, job_id=self.job_id, attempt=self.attempt, until=until
            )
        self._renew_after = self._renewal_due(until)
        return renewed
