"""Celery task messages written straight to Redis, as Celery's Redis transport writes them.

Celery's own `send_task` costs about 0.5 ms of CPU per message and as much again for its
task-sent event (kombu builds a client and a producer for each); this builds the same protocol-2
message and event and hands both to a Redis pipeline, so one round trip publishes a job, its
event for Flower, and whatever else the caller queues on the same pipeline. The message and
event shapes are checked against Celery's own in `tests/shared/test_task_messages.py`.
"""

import base64
import itertools
import json
import os
import socket
import time
import uuid
from typing import Any

import redis

EVENT_EXCHANGE = "celeryev"  # Celery's event exchange (a fanout, i.e. Redis PUBLISH)
SENT_ROUTING_KEY = "task.sent"
_DUMPS = json.JSONEncoder(separators=(", ", ": ")).encode


class TaskMessages:
    """Builds and queues task messages for one process (its origin name and event clock)."""

    def __init__(self) -> None:
        self.hostname = f"gen{os.getpid()}@{socket.gethostname()}"
        self.reply_to = str(uuid.uuid4())
        self._clock = itertools.count(1)

    def publish(
        self,
        pipe: "redis.client.Pipeline",
        *,
        task: str,
        task_id: str,
        args: list[Any],
        queue: str,
        sent_event: bool = True,
    ) -> None:
        """Queue on `pipe` the LPUSH of the task message and the PUBLISH of its sent event."""
        argsrepr = repr(args)
        body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        headers: dict[str, Any] = {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": "{}",
            "origin": self.hostname,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        properties = {"correlation_id": task_id, "reply_to": self.reply_to, "delivery_mode": 2}
        pipe.lpush(queue, _envelope(body, headers, properties, exchange="", routing_key=queue))
        if not sent_event:
            return
        event = {
            "hostname": self.hostname,
            "utcoffset": _utcoffset(),
            "pid": os.getpid(),
            "clock": next(self._clock),
            "uuid": task_id,
            "root_id": task_id,
            "parent_id": None,
            "name": task,
            "args": argsrepr,
            "kwargs": "{}",
            "retries": 0,
            "eta": None,
            "expires": None,
            "queue": queue,
            "exchange": "",
            "routing_key": queue,
            "timestamp": time.time(),
            "type": "task-sent",
        }
        db = pipe.connection_pool.connection_kwargs.get("db", 0)
        channel = f"/{db}.{EVENT_EXCHANGE}/{SENT_ROUTING_KEY}"
        envelope = _envelope(
            event,
            {"hostname": self.hostname},
            {"delivery_mode": 1},
            exchange=EVENT_EXCHANGE,
            routing_key=SENT_ROUTING_KEY,
        )
        pipe.publish(channel, envelope)


def _envelope(
    body: Any,
    headers: dict[str, Any],
    properties: dict[str, Any],
    *,
    exchange: str,
    routing_key: str,
) -> str:
    """Kombu's virtual-transport envelope around a JSON body (base64, as kombu encodes it)."""
    return _DUMPS(
        {
            "body": base64.b64encode(_DUMPS(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                **properties,
                "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def _utcoffset() -> int:
    """Hours west of UTC, as Celery's events report it."""
    return (time.altzone if time.daylight and time.localtime().tm_isdst else time.timezone) // 3600
