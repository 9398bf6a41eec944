"""The Celery tasks of `app` jobs: writing the files on `gpu`, publishing them on `io`."""

from celery import Task

from shared.celery_app import celery_app
from shared.queues import TASK_APP_GENERATE, TASK_APP_PUBLISH
from workers.flows import app
from workers.runner import continue_job, run_job


@celery_app.task(name=TASK_APP_GENERATE, bind=True)
def app_generate(self: Task, job_id: str) -> None:
    run_job(job_id, app.generate, worker=self.request.hostname or "unknown")


@celery_app.task(name=TASK_APP_PUBLISH)
def app_publish(job_id: str, attempt: int) -> None:
    continue_job(job_id, attempt, app.publish)
