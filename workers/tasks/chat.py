"""The Celery task that runs `chat` jobs on the `gpu` queue."""

from celery import Task

from shared.celery_app import celery_app
from shared.queues import TASK_CHAT
from workers.flows import generate
from workers.runner import run_job


@celery_app.task(name=TASK_CHAT, bind=True)
def run_chat(self: Task, job_id: str) -> None:
    run_job(job_id, generate.run_chat, worker=self.request.hostname or "unknown")
