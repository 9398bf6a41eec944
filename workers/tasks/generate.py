"""The Celery task that runs `generate` jobs on the `gpu` queue."""

from celery import Task

from shared.celery_app import celery_app
from shared.queues import TASK_GENERATE
from workers.flows import generate
from workers.runner import run_job


@celery_app.task(name=TASK_GENERATE, bind=True)
def run_generate(self: Task, job_id: str) -> None:
    # No autoretry: retries belong to the job (its attempts and lease), not to the message.
    run_job(job_id, generate.run, worker=self.request.hostname or "unknown")
