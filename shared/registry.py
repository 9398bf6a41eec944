"""The worker registry: each worker announces in Redis which queues it consumes (so `/readyz`
can tell whether every queue has a consumer) and, for `gpu` workers, their GPU, the backend they
talk to, the models it has (so the API can list models without calling a backend itself) and the
job they run now.

A worker's record is a Redis hash: its main process refreshes the `info` field on each beat, while
the pool process that runs a task sets and clears the `job` field, so neither overwrites the other.
"""

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from shared import keys
from shared.broker import get_redis
from shared.queues import QUEUE_GPU

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # a worker silent for this long counts as gone
INFO_FIELD = "info"  # WorkerInfo as JSON, rewritten on each beat
JOB_FIELD = "job"  # the id of the job the worker runs now; absent while it is idle


@dataclass
class WorkerInfo:
    """What one worker announces."""

    hostname: str
    queues: list[str]
    pid: int = field(default_factory=os.getpid)
    provider: str | None = None  # gpu workers: the LLM backend they use
    models: list[str] = field(default_factory=list)  # gpu workers: what that backend serves
    gpu_index: int | None = None  # gpu workers started by `kiln worker --gpus`: their GPU
    backend_url: str | None = None  # gpu workers: where their backend listens
    job_id: str | None = None  # read from the record's own `job` field, never from `info`

    @property
    def state(self) -> str | None:
        """`busy` or `idle` for a gpu worker; other workers run several tasks at once."""
        if QUEUE_GPU not in self.queues:
            return None
        return "busy" if self.job_id else "idle"


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
            announced = asdict(self.info)
            del announced["job_id"]
            try:
                with get_redis().pipeline() as pipe:
                    pipe.hset(self.key, INFO_FIELD, json.dumps(announced))
                    pipe.expire(self.key, HEARTBEAT_TTL_S)
                    pipe.execute()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            if self._stop.wait(HEARTBEAT_INTERVAL_S):
                return


def queue_busy(pipe: "redis.client.Pipeline", hostname: str, job_id: str) -> None:
    """Record that the worker runs this job, in a pipeline the caller executes (the next beat
    would come too late)."""
    key = keys.worker_heartbeat(hostname)
    pipe.hset(key, JOB_FIELD, job_id)
    pipe.expire(key, HEARTBEAT_TTL_S)


def queue_idle(pipe: "redis.client.Pipeline", hostname: str) -> None:
    """Record that the worker runs no job, in a pipeline the caller executes."""
    pipe.hdel(keys.worker_heartbeat(hostname), JOB_FIELD)


def mark_idle(hostname: str) -> None:
    """Record at once that the worker runs no job."""
    try:
        get_redis().hdel(keys.worker_heartbeat(hostname), JOB_FIELD)
    except Exception:
        log.warning("could not mark %s idle", hostname, exc_info=True)


def live_workers() -> list[WorkerInfo]:
    """Every worker whose heartbeat is current."""
    client = get_redis()
    found = []
    for key in client.scan_iter(match=keys.WORKER_HEARTBEAT_PREFIX + "*", count=100):
        record = client.hgetall(key)
        if raw := record.get(INFO_FIELD.encode()):
            worker = WorkerInfo(**_known_fields(json.loads(raw)))
            job = record.get(JOB_FIELD.encode())
            worker.job_id = job.decode() if isinstance(job, bytes) and job else None
            found.append(worker)
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
