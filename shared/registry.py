"""The worker registry: each worker announces in Redis which queues it consumes, so `/readyz`
can tell whether every queue has a consumer."""

import json
import logging
import os
import threading

from shared import keys
from shared.broker import get_redis

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # a worker silent for this long counts as gone


class WorkerHeartbeat:
    """Refreshes `kiln:worker:<hostname>` until stopped."""

    def __init__(self, hostname: str, queues: list[str]) -> None:
        self.key = keys.worker_heartbeat(hostname)
        self.value = json.dumps({"hostname": hostname, "queues": queues, "pid": os.getpid()})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiln-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            get_redis().delete(self.key)
        except Exception:
            log.debug("could not remove heartbeat", exc_info=True)

    def _run(self) -> None:
        while True:
            try:
                get_redis().set(self.key, self.value, ex=HEARTBEAT_TTL_S)
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            if self._stop.wait(HEARTBEAT_INTERVAL_S):
                return


def live_queues() -> set[str]:
    """The queues that at least one live worker consumes."""
    client = get_redis()
    queues: set[str] = set()
    for key in client.scan_iter(match=keys.WORKER_HEARTBEAT_PREFIX + "*", count=100):
        raw = client.get(key)
        if raw:
            queues.update(json.loads(raw)["queues"])
    return queues
