"""Keeps a running job's lease alive and notices when the job is canceled or taken away."""

import logging
import threading
from datetime import timedelta
from types import TracebackType

from shared import crud, keys
from shared.broker import get_redis
from shared.db import open_session
from shared.models import utcnow

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.25  # how soon a running job notices it was canceled


class LeaseKeeper:
    """A background thread that renews the lease every third of its length and watches for
    cancellation; `lost` is set once the job must stop (canceled, or retried elsewhere)."""

    def __init__(self, job_id: str, attempt: int, lease_seconds: float) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.lease_seconds = lease_seconds
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        polls_per_renewal = max(1, int(self.lease_seconds / 3 / CANCEL_POLL_S))
        polls = 0
        while not self._done.wait(CANCEL_POLL_S):
            polls += 1
            try:
                if get_redis().exists(keys.job_cancel(self.job_id)):
                    self.lost.set()
                if polls % polls_per_renewal == 0 and not self._renew():
                    self.lost.set()
            except Exception:
                # Renewal keeps trying; if it never succeeds the lease runs out and the
                # reconciler retries the job, which is the right outcome for a cut-off worker.
                log.warning("lease renewal failed for job %s", self.job_id, exc_info=True)

    def _renew(self) -> bool:
        until = utcnow() + timedelta(seconds=self.lease_seconds)
        with open_session() as session:
            return crud.renew_lease(
                session=session, job_id=self.job_id, attempt=self.attempt, until=until
            )
