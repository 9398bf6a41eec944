"""The anchors Kiln is measured against: a bare Celery app with no-op tasks, and a bare FastAPI
app whose one endpoint only publishes such a task. Both read BENCH_REDIS_URL.

    uvicorn bench.anchors:create_app --factory --workers 2      # the bare endpoint
    celery -A bench.anchors:celery worker -Q gpu -c 2 ...       # the raw Celery worker

The Celery settings are the ones the comparison is about (late acks, prefetch 1, JSON, no
result backend, one direct exchange per queue); everything else stays at Celery's defaults.
"""

import os
import time
import uuid
from functools import cache
from typing import Any

import redis
from celery import Celery, signals
from fastapi import FastAPI
from pydantic import BaseModel

QUEUE = "gpu"
TASK_NOOP = "bench.noop"
DONE_LIST = "bench:done"  # each finished no-op task pushes its finish time (epoch seconds) here
READY_PREFIX = "bench:ready:"  # + worker hostname, set once the worker consumes


def make_celery(broker_url: str) -> Celery:
    """A bare Celery app on `broker_url` with the settings under comparison."""
    app = Celery("anchor", broker=broker_url, set_as_current=False)
    app.conf.update(
        # No task_queues: Celery creates "gpu" on use with a direct exchange and routing key of
        # the same name, which is how Kiln declares its queues.
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    return app


celery = make_celery(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


@cache
def _redis() -> "redis.Redis":
    """This process's client (made after the pool forks, on first use)."""
    return redis.Redis.from_url(celery.conf.broker_url)


def noop(job_id: str, reply_to: str | None = None) -> None:
    """Nothing, then say so: the finish time on DONE_LIST, and the id on `reply_to` if given.

    The one Redis write is how the benchmark sees the task finish without a result backend.
    """
    pipe = _redis().pipeline(transaction=False)
    pipe.rpush(DONE_LIST, repr(time.time()))
    if reply_to:
        pipe.rpush(reply_to, job_id)
    pipe.execute()


# Registered by call rather than as decorators: Celery carries no type hints.
celery.task(name=TASK_NOOP)(noop)


def _announce(sender: Any, **_: Any) -> None:
    _redis().set(READY_PREFIX + sender.hostname, "1")


signals.worker_ready.connect(_announce, weak=False)


class JobIn(BaseModel):
    """The same body Kiln's `POST /v1/jobs` takes, validated only as far as its shape."""

    kind: str
    input: dict[str, Any]


class JobOut(BaseModel):
    id: str
    status: str


def create_app() -> FastAPI:
    """The bare endpoint: parse the body, publish a no-op task, answer 202 with its id."""
    app = FastAPI()

    @app.post("/v1/jobs", status_code=202)
    def submit(body: JobIn) -> JobOut:
        job_id = uuid.uuid4().hex
        celery.send_task(TASK_NOOP, args=[job_id], task_id=job_id, queue=QUEUE, retry=False)
        return JobOut(id=job_id, status="queued")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
