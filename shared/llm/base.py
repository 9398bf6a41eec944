"""The provider interface every LLM backend implements, and the values it exchanges."""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

TokenSink = Callable[[str], None]
"""Receives each generated text delta, in order."""

StopCheck = Callable[[], bool]
"""Answers True once the job was canceled; providers ask it between tokens."""


@dataclass(frozen=True)
class GenerateRequest:
    """One completion request, as the `generate` job kind's input describes it."""

    prompt: str
    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: dict[str, Any] | str | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str  # system | user | assistant | tool
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """A conversation to continue, as the `chat` job kind's input describes it."""

    messages: list[ChatMessage]
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    format: dict[str, Any] | str | None = None


LLMRequest = GenerateRequest | ChatRequest
"""A request of either kind a provider answers."""


@dataclass(frozen=True)
class GenerateResult:
    """A finished completion with the counts and durations (nanoseconds) the backend reported."""

    response: str
    model: str
    provider: str
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_duration: int | None = None
    eval_duration: int | None = None
    cached: bool = False  # served from the result cache, not by the backend

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LLMProvider(Protocol):
    """A backend that turns a prompt into streamed text."""

    name: str

    def generate(
        self, request: GenerateRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        """Stream the completion through `on_token`; raise `JobCanceled` once `should_stop()`.

        Raises `LLMUnavailable` when the backend cannot be reached, `ModelNotFound` for an
        unknown model and `LLMFailed` when the backend reports an error, also mid-stream.
        """
        ...

    def chat(
        self, request: ChatRequest, *, on_token: TokenSink, should_stop: StopCheck
    ) -> GenerateResult:
        """Like `generate`, for a conversation; `response` is the assistant's reply."""
        ...

    def list_models(self) -> list[dict[str, Any]]:
        """The models the backend has, as it describes them (`name` or `id` names each)."""
        ...


def complete(
    provider: LLMProvider, request: LLMRequest, *, on_token: TokenSink, should_stop: StopCheck
) -> GenerateResult:
    """Ask `provider` to answer either kind of request."""
    if isinstance(request, ChatRequest):
        return provider.chat(request, on_token=on_token, should_stop=should_stop)
    return provider.generate(request, on_token=on_token, should_stop=should_stop)
