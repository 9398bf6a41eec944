"""The Celery task that sends batches of webhook deliveries on the `callbacks` queue."""

from shared.celery_app import celery_app
from shared.queues import TASK_DELIVER
from workers.flows.deliver import deliver


@celery_app.task(name=TASK_DELIVER)
def deliver_webhook(delivery_id: str) -> None:
    # No Celery retries: the delivery's schedule lives in its row, driven by the reconciler,
    # so it survives restarted workers and a flushed Redis.
    deliver(delivery_id)
