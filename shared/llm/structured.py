"""Structured output: check a client's `format` at submit, validate a reply against it, and ask
once more with the validation error when the reply does not fit."""

import json
from dataclasses import replace
from typing import Any

from jsonschema import exceptions, validators

from shared.llm.base import ChatMessage, ChatRequest, LLMRequest

Format = dict[str, Any] | str
"""A JSON schema, or `json` for any JSON value (Ollama's `format`)."""

CORRECTION = (
    "Your previous answer was not valid: {problem}. Answer again with only JSON that "
    "satisfies the requested schema, and nothing else."
)


def check_schema(schema: dict[str, Any]) -> None:
    """Raise `ValueError` naming the first fault when `schema` is not a valid JSON schema."""
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message} (at {exc.json_path})") from None


def problem_with(reply: str, format: Format) -> str | None:
    """Why `reply` does not satisfy `format`, or None when it does."""
    try:
        value = json.loads(reply)
    except ValueError as exc:
        return f"the reply is not JSON ({exc})"
    if not isinstance(format, dict):
        return None  # `json` asks for any JSON value
    validator = validators.validator_for(format)(format)
    error = exceptions.best_match(validator.iter_errors(value))
    return None if error is None else f"{error.message} (at {error.json_path})"


def corrected(request: LLMRequest, reply: str, problem: str) -> LLMRequest:
    """The same request, told what was wrong with its `reply`."""
    note = CORRECTION.format(problem=problem)
    if isinstance(request, ChatRequest):
        turns = [ChatMessage("assistant", reply), ChatMessage("user", note)]
        return replace(request, messages=[*request.messages, *turns])
    return replace(request, prompt=f"{request.prompt}\n\nYour previous answer:\n{reply}\n\n{note}")
