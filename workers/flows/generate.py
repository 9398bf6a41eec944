"""The `generate` and `chat` jobs: one call to the configured LLM provider, tokens streamed as
events."""

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.exceptions import LLMUnavailable
from shared.llm import GenerateRequest, GenerateResult, get_provider
from shared.llm.base import ChatMessage, ChatRequest, StopCheck, TokenSink
from shared.schemas import ChatInput, GenerateInput
from workers.runner import JobContext

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # waits between tries while the backend is unreachable

Call = Callable[[TokenSink, StopCheck], GenerateResult]


def run(context: JobContext) -> dict[str, Any]:
    """Generate the completion of one prompt."""
    job_input = GenerateInput.model_validate(context.job.input)
    request = GenerateRequest(
        prompt=job_input.prompt,
        model=job_input.model or context.settings.default_model,
        system=job_input.system,
        options=job_input.options,
        format=job_input.format,
    )
    provider = get_provider()

    def call(sink: TokenSink, stop: StopCheck) -> GenerateResult:
        return provider.generate(request, on_token=sink, should_stop=stop)

    return _with_retries(context, call)


def run_chat(context: JobContext) -> dict[str, Any]:
    """Generate the assistant's reply to a conversation."""
    job_input = ChatInput.model_validate(context.job.input)
    request = ChatRequest(
        messages=[ChatMessage(m.role, m.content) for m in job_input.messages],
        model=job_input.model or context.settings.default_model,
        options=job_input.options,
        format=job_input.format,
    )
    provider = get_provider()

    def call(sink: TokenSink, stop: StopCheck) -> GenerateResult:
        return provider.chat(request, on_token=sink, should_stop=stop)

    return _with_retries(context, call)


def _with_retries(context: JobContext, call: Call) -> dict[str, Any]:
    """Make the call, streaming its tokens; retry an unreachable backend only before any token
    was sent (a retry after that would repeat text the client already has)."""
    sent_tokens = False

    def on_token(delta: str) -> None:
        nonlocal sent_tokens
        sent_tokens = True
        context.emit_token(delta)

    retries, attempt = context.settings.llm_retries, 0
    while True:
        try:
            result = call(on_token, context.should_stop)
        except LLMUnavailable:
            if sent_tokens or attempt >= retries:
                raise
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            attempt += 1
            log.warning("LLM backend unavailable; retry %d/%d in %.1fs", attempt, retries, delay)
            time.sleep(delay)
        else:
            return result.to_dict()
