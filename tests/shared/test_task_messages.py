"""Kiln's direct task messages match what Celery itself writes, message and sent event alike."""

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.celery_app import create_celery
from shared.config import Settings
from shared.embedded_redis import EmbeddedRedis
from shared.task_messages import TaskMessages

VARYING = {"delivery_tag", "reply_to", "origin", "hostname", "pid", "clock", "timestamp"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    server = EmbeddedRedis(tmp_path, persist=False)
    server.start()
    connection = redis.Redis.from_url(server.url.replace("/0", "/3"))
    yield connection
    connection.close()
    server.stop()


def _decoded(raw: bytes | str) -> dict[str, Any]:
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return dict(envelope)


def _without_varying(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_varying(v) for k, v in value.items() if k not in VARYING}
    return value


def _published(client: redis.Redis, send: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    subscriber = client.pubsub()  # type: ignore[no-untyped-call]
    subscriber.psubscribe("*")
    subscriber.get_message(timeout=1)
    client.delete("gpu")
    send()
    message = _decoded(client.lrange("gpu", 0, 0)[0])
    deadline = time.monotonic() + 5
    while (event := subscriber.get_message(timeout=1)) is None or event["type"] != "pmessage":
        assert time.monotonic() < deadline, "no task-sent event was published"
    subscriber.close()
    return message, event["channel"].decode(), _decoded(event["data"])


def test_messages_and_sent_events_match_celerys(client: redis.Redis) -> None:
    url = client.connection_pool.connection_kwargs
    celery = create_celery(Settings(redis_url=f"redis://127.0.0.1:{url['port']}/3"))
    theirs = _published(
        client,
        lambda: celery.send_task(
            "kiln.generate", args=["job-1"], task_id="job-1", queue="gpu", retry=False
        ),
    )

    def ours_send() -> None:
        pipe = client.pipeline(transaction=False)
        TaskMessages().publish(
            pipe, task="kiln.generate", task_id="job-1", args=["job-1"], queue="gpu"
        )
        pipe.execute()

    ours = _published(client, ours_send)

    assert ours[1] == theirs[1] == "/3.celeryev/task.sent"
    assert _without_varying(ours[0]) == _without_varying(theirs[0])
    assert _without_varying(ours[2]) == _without_varying(theirs[2])
    assert ours[0]["headers"]["origin"].startswith("gen")
    assert ours[2]["body"]["clock"] >= 1
