"""The Celery tasks of `model_pull` and `model_delete` jobs, on the `gpu` queue."""

from celery import Task

from shared.celery_app import celery_app
from shared.queues import TASK_MODEL_DELETE, TASK_MODEL_PULL
from workers.flows import models
from workers.runner import run_job


@celery_app.task(name=TASK_MODEL_PULL, bind=True)
def pull_model(self: Task, job_id: str) -> None:
    run_job(job_id, models.pull, worker=self.request.hostname or "unknown")


@celery_app.task(name=TASK_MODEL_DELETE, bind=True)
def delete_model(self: Task, job_id: str) -> None:
    run_job(job_id, models.delete, worker=self.request.hostname or "unknown")
