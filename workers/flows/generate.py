"""The `generate` job: one prompt through the configured LLM provider, tokens streamed as events."""

import logging
import time
from typing import Any

from shared.exceptions import LLMUnavailable
from shared.llm import GenerateRequest, get_provider
from shared.schemas import GenerateInput
from workers.runner import JobContext

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # waits between tries while the backend is unreachable


def run(context: JobContext) -> dict[str, Any]:
    """Generate the completion; retry an unreachable backend only before any token was sent."""
    job_input = GenerateInput.model_validate(context.job.input)
    request = GenerateRequest(
        prompt=job_input.prompt,
        model=job_input.model or context.settings.default_model,
        system=job_input.system,
        options=job_input.options,
        format=job_input.format,
    )
    provider = get_provider()
    sent_tokens = False

    def on_token(delta: str) -> None:
        nonlocal sent_tokens
        sent_tokens = True
        context.emit_token(delta)

    retries, attempt = context.settings.llm_retries, 0
    while True:
        try:
            result = provider.generate(request, on_token=on_token, should_stop=context.should_stop)
        except LLMUnavailable:
            if sent_tokens or attempt >= retries:
                raise
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            attempt += 1
            log.warning("LLM backend unavailable; retry %d/%d in %.1fs", attempt, retries, delay)
            time.sleep(delay)
        else:
            return result.to_dict()
