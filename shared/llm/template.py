"""A deterministic provider with no model behind it, for demos, CI and benchmarks."""

import re
import time

from shared.exceptions import JobCanceled
from shared.llm.base import GenerateRequest, GenerateResult, StopCheck, TokenSink

_TOKEN = re.compile(r"\s*\S+")


def template_text(prompt: str) -> str:
    """The reply the template provider gives to a prompt."""
    return f"Kiln template reply: {' '.join(prompt.split())}"


class TemplateProvider:
    """Streams a fixed rewording of the prompt, word by word."""

    name = "template"

    def generate(
        self, request: GenerateRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        started = time.perf_counter_ns()
        tokens = _TOKEN.findall(template_text(request.prompt))
        for token in tokens:
            if should_stop():
                raise JobCanceled
            on_token(token)
        elapsed = time.perf_counter_ns() - started
        return GenerateResult(
            response="".join(tokens),
            model="template",
            provider=self.name,
            done_reason="stop",
            prompt_eval_count=len(request.prompt.split()),
            eval_count=len(tokens),
            total_duration=elapsed,
            load_duration=0,
            prompt_eval_duration=0,
            eval_duration=elapsed,
        )
