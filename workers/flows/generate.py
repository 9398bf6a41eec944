"""The `generate` and `chat` jobs: one answer from the LLM, tokens streamed as events.

An answer comes from the result cache when the request is repeatable, else from the configured
provider (retried while unreachable, then the fallbacks in order); with a `format`, it is
validated and asked for once more with the validation error before the job fails.
"""

import logging
import time
from typing import Any

from shared.broker import get_redis
from shared.exceptions import InvalidOutput, LLMUnavailable, ModelNotFound
from shared.llm import GenerateRequest, GenerateResult, fallback_providers, get_provider
from shared.llm.base import ChatMessage, ChatRequest, LLMProvider, LLMRequest, complete
from shared.llm.cache import ResultCache, cache_key, is_repeatable
from shared.llm.structured import corrected, problem_with
from shared.schemas import ChatInput, GenerateInput
from workers.runner import JobContext

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # waits between tries while the backend is unreachable
FORMAT_TRIES = 2  # a reply that misses the format gets one retry told what was wrong


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
    return _answer(context, request, use_cache=job_input.cache).to_dict()


def run_chat(context: JobContext) -> dict[str, Any]:
    """Generate the assistant's reply to a conversation."""
    job_input = ChatInput.model_validate(context.job.input)
    request = ChatRequest(
        messages=[ChatMessage(m.role, m.content) for m in job_input.messages],
        model=job_input.model or context.settings.default_model,
        options=job_input.options,
        format=job_input.format,
    )
    return _answer(context, request, use_cache=job_input.cache).to_dict()


def _answer(context: JobContext, request: LLMRequest, *, use_cache: bool) -> GenerateResult:
    """The cached answer, or a fresh one (cached when the request is repeatable)."""
    provider = get_provider()
    ttl_s = context.settings.cache_ttl_s
    if not (use_cache and ttl_s and is_repeatable(request.options)):
        return _validated(context, request)
    cache, key = ResultCache(get_redis(), ttl_s), cache_key(provider.name, request)
    if (hit := cache.get(key)) is not None:
        if hit.response:
            context.emit_token(hit.response)
        return hit
    result = _validated(context, request)
    if result.provider == provider.name:  # a fallback's answer is not what was asked for
        cache.put(key, result)
    return result


def _validated(context: JobContext, request: LLMRequest) -> GenerateResult:
    """An answer that satisfies the request's format, if it has one.

    With a format, tokens are held until the reply validates, so a stream never carries a
    reply that was then asked for again.
    """
    output_format = request.format
    if not output_format:
        return _ask(context, request, _Tokens(context, hold=False))
    for attempt in range(1, FORMAT_TRIES + 1):
        tokens = _Tokens(context, hold=True)
        result = _ask(context, request, tokens)
        problem = problem_with(result.response, output_format)
        if problem is None:
            tokens.release()
            return result
        log.warning("reply %d of %d misses the format: %s", attempt, FORMAT_TRIES, problem)
        request = corrected(request, result.response, problem)
    raise InvalidOutput(f"the reply does not match the requested format: {problem}")


class _Tokens:
    """Where one answer's tokens go: straight to the job's stream, or held until released."""

    def __init__(self, context: JobContext, *, hold: bool) -> None:
        self._context = context
        self._hold = hold
        self._held: list[str] = []
        self._sent = False  # some token reached the stream: a retry would repeat text

    def sink(self, delta: str) -> None:
        if self._hold:
            self._held.append(delta)
        else:
            self._sent = True
            self._context.emit_token(delta)

    def restart(self) -> bool:
        """Forget a failed try's tokens; False when some already reached the stream."""
        self._held.clear()
        return not self._sent

    def release(self) -> None:
        for delta in self._held:
            self._context.emit_token(delta)
        self._held.clear()


def _ask(context: JobContext, request: LLMRequest, tokens: _Tokens) -> GenerateResult:
    """The configured provider's answer, retried while it is unreachable; then the fallbacks'."""
    try:
        return _with_retries(context, get_provider(), request, tokens)
    except LLMUnavailable as unavailable:
        if not tokens.restart():
            raise
        for provider in fallback_providers():
            try:
                result = complete(
                    provider, request, on_token=tokens.sink, should_stop=context.should_stop
                )
            except (LLMUnavailable, ModelNotFound) as exc:
                if not tokens.restart():
                    raise
                log.warning("fallback %s could not answer: %s", provider.name, exc.message)
                continue
            log.info("answered by fallback %s", provider.name)
            return result
        raise unavailable


def _with_retries(
    context: JobContext, provider: LLMProvider, request: LLMRequest, tokens: _Tokens
) -> GenerateResult:
    """Ask `provider`; retry while it is unreachable, unless tokens already reached the stream
    (a retry would repeat text the client already has)."""
    retries, attempt = context.settings.llm_retries, 0
    while True:
        try:
            return complete(
                provider, request, on_token=tokens.sink, should_stop=context.should_stop
            )
        except LLMUnavailable:
            if not tokens.restart() or attempt >= retries:
                raise
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            attempt += 1
            log.warning("LLM backend unavailable; retry %d/%d in %.1fs", attempt, retries, delay)
            time.sleep(delay)
