"""The worker registry: each worker announces in Redis which queues it consumes (so `/readyz`
can tell whether every queue has a consumer) and, for `gpu` workers, the backend they talk to and
the models it has (so the API can list models without calling a backend itself)."""

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from shared import keys
from shared.broker import get_redis

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # a worker silent for this long counts as gone


@dataclass
class WorkerInfo:
    """What one worker announces."""

    hostname: str
    queues: list[str]
    pid: int = field(default_factory=os.getpid)
    provider: str | None = None  # gpu workers: the LLM backend they use
    models: list[str] = field(default_factory=list)  # gpu workers: what that backend serves


class WorkerHeartbeat:
    """Refreshes `kiln:worker:<hostname>` until stopped; `list_models`, when given, is asked
    again on each beat (a backend's models change as they are pulled and deleted)."""

    def __init__(
        self,
        info: WorkerInfo,
        list_models: Callable[[], list[str]] | None = None,
    ) -> None:
        self.key = keys.worker_heartbeat(info.hostname)
        self.info = info
        self.list_models = list_models
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
                if self.list_models is not None:
                    self.info.models = self.list_models()
            except Exception:
                log.warning("could not list the backend's models", exc_info=True)
            try:
                get_redis().set(self.key, json.dumps(asdict(self.info)), ex=HEARTBEAT_TTL_S)
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            if self._stop.wait(HEARTBEAT_INTERVAL_S):
                return


def live_workers() -> list[WorkerInfo]:
    """Every worker whose heartbeat is current."""
    client = get_redis()
    found = []
    for key in client.scan_iter(match=keys.WORKER_HEARTBEAT_PREFIX + "*", count=100):
        raw = client.get(key)
        if raw:
            found.append(WorkerInfo(**_known_fields(json.loads(raw))))
    return sorted(found, key=lambda worker: worker.hostname)


def _known_fields(data: dict[str, Any]) -> dict[str, Any]:
    # A newer worker may announce more than this API knows of.
    return {name: data[name] for name in WorkerInfo.__dataclass_fields__ if name in data}


def live_queues() -> set[str]:
    """The queues that at least one live worker consumes."""
    return {queue for worker in live_workers() for queue in worker.queues}


def servable_models() -> dict[str, list[str]]:
    """Each model a live gpu worker can serve, with the workers that serve it."""
    served: dict[str, list[str]] = {}
    for worker in live_workers():
        for model in worker.models:
            served.setdefault(model, []).append(worker.hostname)
    return served
