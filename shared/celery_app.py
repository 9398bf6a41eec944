"""The Celery app object with Kiln's queues and reliability settings; it imports no task code."""

from celery import Celery
from kombu.entity import Exchange, Queue

from shared.config import Settings, get_settings
from shared.queues import QUEUE_FOR_TASK, QUEUE_IO, QUEUES

TASK_SOFT_TIME_LIMIT_S = 1800  # the task gets SoftTimeLimitExceeded and can fail the job cleanly
TASK_TIME_LIMIT_S = 1860  # then the pool kills the process; the reconciler retries the job


def create_celery(settings: Settings) -> Celery:
    """A Celery app wired for Kiln's reliability rules."""
    app = Celery("kiln", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # One direct exchange per queue, so a message lands in exactly one queue.
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        task_default_queue=QUEUE_IO,
        task_routes={name: {"queue": queue} for name, queue in QUEUE_FOR_TASK.items()},
        # A message is acknowledged only after its task returns, and given back if the worker
        # process dies; the job row's conditional claim makes a redelivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job row is the status API, not Celery's result backend
        # Flower needs both kinds of events. Workers send theirs (about 0.4 ms of CPU a task)
        # while a monitor listens: Flower asks them every 5 s, or KILN_TASK_EVENTS sets it.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=True,
        worker_consumer="workers.consumer:Consumer",  # sends the task events in batches
        task_soft_time_limit=TASK_SOFT_TIME_LIMIT_S,
        task_time_limit=TASK_TIME_LIMIT_S,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"socket_timeout": 10, "socket_connect_timeout": 5},
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


celery_app = create_celery(get_settings())
