"""The Celery task that runs `compose` jobs on the `gpu` queue."""

from celery import Task

from shared.celery_app import celery_app
from shared.queues import TASK_COMPOSE
from workers.flows import compose
from workers.runner import run_job


@celery_app.task(name=TASK_COMPOSE, bind=True)
def run_compose(self: Task, job_id: str) -> None:
    run_job(job_id, compose.run, worker=self.request.hostname or "unknown")
