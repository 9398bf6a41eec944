"""Prometheus metrics of every Kiln process, and how they are exported.

Processes that share a host (`kiln up`, the uvicorn workers of one API, a Celery worker's
prefork children) write to one `PROMETHEUS_MULTIPROC_DIR`, and whoever serves `/metrics` adds
them up; the queue depths are read from Redis at scrape time. The variable must be set before
`prometheus_client` is first imported (see `kiln worker`'s `_export_metrics`).
"""

import logging
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.broker import get_redis
from shared.queues import QUEUES
from shared.states import TERMINAL

if TYPE_CHECKING:
    from shared.models import Job
    from shared.states import JobStatus

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from a queued job's first milliseconds up to the hours a long app build may wait.
TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# kombu's Redis transport keeps a queue's prioritised messages in lists named with this suffix.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)

JOBS_SUBMITTED = Counter("kiln_jobs_submitted", "Jobs accepted by the API.", ["kind"])
JOBS_FINISHED = Counter(
    "kiln_jobs_finished", "Jobs that reached a final status.", ["kind", "status"]
)
QUEUE_WAIT = Histogram(
    "kiln_job_queue_wait_seconds",
    "From submission to a worker starting the job.",
    ["kind"],
    buckets=TIME_BUCKETS,
)
RUN_TIME = Histogram(
    "kiln_job_run_seconds",
    "From a worker starting the job to its final status.",
    ["kind", "status"],
    buckets=TIME_BUCKETS,
)
TOKENS = Counter("kiln_tokens_generated", "Completion tokens the LLM backends produced.", ["kind"])
WEBHOOK_ATTEMPTS = Counter(
    "kiln_webhook_attempts",
    "Webhook and evaluation-callback delivery attempts by outcome.",
    ["outcome"],
)
RECONCILER_ACTIONS = Counter("kiln_reconciler_actions", "Repairs the reconciler made.", ["action"])


def observe_status_change(job: "Job", to: "JobStatus") -> None:
    """Count a job's status change: its queue wait when it starts, its run when it ends."""
    if to not in TERMINAL:
        if job.started_at is not None:
            QUEUE_WAIT.labels(job.kind).observe(_seconds(job.started_at - job.created_at))
        return
    JOBS_FINISHED.labels(job.kind, to.value).inc()
    if job.started_at is not None and job.finished_at is not None:
        RUN_TIME.labels(job.kind, to.value).observe(_seconds(job.finished_at - job.started_at))
    if isinstance(completion := (job.result or {}).get("eval_count"), int):
        TOKENS.labels(job.kind).inc(completion)


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())


class QueueDepth(Collector):
    """`kiln_queue_depth`: messages waiting in each Celery queue, read from Redis."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "kiln_queue_depth", "Messages waiting per queue.", labels=["queue"]
        )
        try:
            pipeline = get_redis().pipeline(transaction=False)
            for queue in QUEUES:
                pipeline.llen(queue)
                for step in PRIORITY_STEPS:
                    pipeline.llen(f"{queue}{PRIORITY_SEPARATOR}{step}")
            lengths = pipeline.execute()
        except Exception:
            log.warning("could not read the queue depths", exc_info=True)
            return
        width = 1 + len(PRIORITY_STEPS)
        for index, queue in enumerate(QUEUES):
            gauge.add_metric([queue], sum(lengths[index * width : (index + 1) * width]))
        yield gauge


def exposition(*, with_queues: bool) -> tuple[bytes, str]:
    """The text format of every metric this host's Kiln processes recorded."""
    text = generate_latest(_collecting_registry())
    if with_queues:
        queues = CollectorRegistry()
        queues.register(QueueDepth())
        text += generate_latest(queues)
    return text, CONTENT_TYPE_LATEST


def serve(port: int) -> None:
    """Serve this process group's metrics on `port` (workers and the reconciler)."""
    start_http_server(port, registry=_collecting_registry())
    log.info("metrics on :%d/metrics", port)


def reset_multiprocess_dir(directory: Path) -> None:
    """Empty `directory` for a new run of processes (old files would add stale counts)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def _collecting_registry() -> CollectorRegistry:
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
