"""A deterministic provider with no model behind it, for demos, CI and benchmarks."""

import re
import time
from typing import Any

from shared.exceptions import JobCanceled
from shared.llm.base import ChatRequest, GenerateRequest, GenerateResult, StopCheck, TokenSink

_TOKEN = re.compile(r"\s*\S+")
TEMPLATE_MODEL = "template"


def template_text(prompt: str) -> str:
    """The reply the template provider gives to a prompt."""
    return f"Kiln template reply: {' '.join(prompt.split())}"


class TemplateProvider:
    """Streams a fixed rewording of the prompt, word by word."""

    name = "template"

    def generate(
        self, request: GenerateRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        return self._reply(request.prompt, on_token, should_stop)

    def chat(
        self, request: ChatRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        """Replies to the last user message."""
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        return self._reply(last, on_token, should_stop)

    def list_models(self) -> list[dict[str, Any]]:
        """The one "model" the template provider has."""
        return [{"name": TEMPLATE_MODEL}]

    def _reply(self, prompt: str, on_token: TokenSink, should_stop: StopCheck) -> GenerateResult:
        started = time.perf_counter_ns()
        tokens = _TOKEN.findall(template_text(prompt))
        for token in tokens:
            if should_stop():
                raise JobCanceled
            on_token(token)
        elapsed = time.perf_counter_ns() - started
        return GenerateResult(
            response="".join(tokens),
            model=TEMPLATE_MODEL,
            provider=self.name,
            done_reason="stop",
            prompt_eval_count=len(prompt.split()),
            eval_count=len(tokens),
            total_duration=elapsed,
            load_duration=0,
            prompt_eval_duration=0,
            eval_duration=elapsed,
        )
