"""Which requests the result cache takes, and the key each gets."""

from shared.llm.base import ChatMessage, ChatRequest, GenerateRequest
from shared.llm.cache import cache_key, is_repeatable

SCHEMA = {"type": "object"}


def test_only_greedy_or_seeded_options_are_repeatable() -> None:
    assert is_repeatable({"temperature": 0})
    assert is_repeatable({"seed": 0, "temperature": 0.7})
    assert not is_repeatable({})
    assert not is_repeatable({"temperature": 0.2})


def test_the_cache_key_changes_with_every_field_and_the_provider() -> None:
    base = GenerateRequest("p", "m", system="s", options={"seed": 1}, format=SCHEMA)
    variants: list[GenerateRequest | ChatRequest] = [
        GenerateRequest("p2", "m", system="s", options={"seed": 1}, format=SCHEMA),
        GenerateRequest("p", "m2", system="s", options={"seed": 1}, format=SCHEMA),
        GenerateRequest("p", "m", system=None, options={"seed": 1}, format=SCHEMA),
        GenerateRequest("p", "m", system="s", options={"seed": 2}, format=SCHEMA),
        GenerateRequest("p", "m", system="s", options={"seed": 1}, format="json"),
        ChatRequest([ChatMessage("user", "p")], "m", options={"seed": 1}, format=SCHEMA),
    ]

    keys = {cache_key("ollama", request) for request in variants}

    assert cache_key("ollama", base) == cache_key("ollama", base)
    assert cache_key("ollama", base) not in keys
    assert len(keys) == len(variants)
    assert cache_key("openai", base) != cache_key("ollama", base)
