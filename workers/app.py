"""The worker entry point: the Celery app with every task module and process hooks loaded.

Run with `kiln worker` (or `celery -A workers.app worker`).
"""

from typing import Any

from celery import signals

from shared.broker import reset_redis
from shared.celery_app import celery_app
from shared.config import LLMProviderName, Settings, get_settings
from shared.db import dispose_engine
from shared.llm import get_provider
from shared.logs import configure_logging
from shared.queues import QUEUE_GPU
from shared.registry import WorkerHeartbeat, WorkerInfo
from workers.flows.deliver import get_sender
from workers.tasks import app as app_tasks  # noqa: F401  (importing registers the tasks)
from workers.tasks import chat, compose, deliver, generate, models  # noqa: F401

app = celery_app
_heartbeats: list[WorkerHeartbeat] = []  # this worker's, once it is ready


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(get_settings().log_level)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A forked pool process must not share the parent's DB or Redis sockets.
    dispose_engine()
    reset_redis()
    get_sender.cache_clear()


@signals.worker_ready.connect
def _announce(sender: Any, **_: Any) -> None:
    queues = sorted(queue.name for queue in sender.app.amqp.queues.consume_from.values())
    info = WorkerInfo(hostname=sender.hostname, queues=queues)
    list_models = None
    if QUEUE_GPU in queues:
        settings = get_settings()
        info.provider = get_provider().name
        info.gpu_index = settings.gpu_index
        info.backend_url = _backend_url(settings)
        list_models = _model_names
    heartbeat = WorkerHeartbeat(info, list_models)
    heartbeat.start()
    _heartbeats.append(heartbeat)


def _backend_url(settings: Settings) -> str | None:
    urls = {
        LLMProviderName.ollama: settings.ollama_url,
        LLMProviderName.openai: settings.openai_base_url,
    }
    return urls.get(settings.llm_provider)


def _model_names() -> list[str]:
    # Ollama names its models `name`; OpenAI-compatible servers call it `id`.
    return [str(m.get("name") or m.get("id")) for m in get_provider().list_models()]


@signals.worker_shutdown.connect
def _retire(**_: Any) -> None:
    while _heartbeats:
        _heartbeats.pop().stop()
