"""The `model_pull` and `model_delete` jobs: one GPU worker pulls the model into (or deletes it
from) every Ollama server the live GPU workers announce, so each of them can serve it (or none
does); a pull's download progress becomes the job's progress events."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.config import LLMProviderName
from shared.exceptions import JobError, ModelNotFound
from shared.llm.ollama import OllamaProvider
from shared.queues import QUEUE_GPU
from shared.registry import live_workers
from shared.schemas import ModelInput
from workers.runner import JobContext

log = logging.getLogger(__name__)

PROGRESS_STEP_PERCENT = 10  # a download reports progress each time it gains this much


class NotSupported(JobError):
    """The configured backend cannot pull or delete models."""

    code = "not_supported"
    status_code = 422


def pull(context: JobContext) -> dict[str, Any]:
    """Pull the model into every GPU worker's Ollama, reporting each download as it goes."""
    model = ModelInput.model_validate(context.job.input).model
    backends = _backends(context)
    for url in backends:
        with _ollama(url) as ollama:
            ollama.pull(model, on_progress=_Reporter(context, url), should_stop=context.should_stop)
        log.info("pulled model %s into %s", model, url)
    return {"model": model, "status": "success", "backends": backends}


def delete(context: JobContext) -> dict[str, Any]:
    """Delete the model from every GPU worker's Ollama; `model_not_found` if none had it."""
    model = ModelInput.model_validate(context.job.input).model
    deleted = []
    for url in _backends(context):
        try:
            with _ollama(url) as ollama:
                ollama.delete(model)
        except ModelNotFound:
            continue
        deleted.append(url)
        log.info("deleted model %s from %s", model, url)
    if not deleted:
        raise ModelNotFound(f"no Ollama server has the model {model!r}")
    return {"model": model, "status": "deleted", "backends": deleted}


def _backends(context: JobContext) -> list[str]:
    """This worker's Ollama and every other one a live GPU worker announces, each once."""
    if context.settings.llm_provider != LLMProviderName.ollama:
        raise NotSupported(
            f"the {context.settings.llm_provider} backend cannot pull or delete models"
        )
    announced = [
        worker.backend_url
        for worker in live_workers()
        if QUEUE_GPU in worker.queues and worker.provider == LLMProviderName.ollama
    ]
    urls = [context.settings.ollama_url, *(url for url in announced if url)]
    return list(dict.fromkeys(url.rstrip("/") for url in urls))


@contextmanager
def _ollama(url: str) -> Iterator[OllamaProvider]:
    ollama = OllamaProvider(url)
    try:
        yield ollama
    finally:
        ollama.close()


class _Reporter:
    """Turns a pull's progress lines into job progress: every new status, and each further
    PROGRESS_STEP_PERCENT of a download (a line per chunk would flood the job's events)."""

    def __init__(self, context: JobContext, backend: str) -> None:
        self.context = context
        self.backend = backend
        self.status: str | None = None
        self.percent = 0

    def __call__(self, line: dict[str, Any]) -> None:
        status = str(line.get("status", ""))
        total, completed = line.get("total"), line.get("completed")
        progress: dict[str, Any] = {"step": "pulling", "backend": self.backend, "status": status}
        percent = None
        if isinstance(total, int) and total > 0 and isinstance(completed, int):
            percent = completed * 100 // total
            progress |= {"total": total, "completed": completed, "percent": percent}
        if status == self.status and (
            percent is None or percent < self.percent + PROGRESS_STEP_PERCENT
        ):
            return
        self.status = status
        if percent is not None:
            self.percent = percent
        self.context.emit_progress(progress)
