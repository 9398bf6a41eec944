"""LLM providers behind one interface; `get_provider` picks the configured one and
`fallback_providers` the ones KILN_LLM_FALLBACK names."""

from functools import lru_cache

from shared.config import LLMProviderName, get_settings
from shared.llm.base import GenerateRequest, GenerateResult, LLMProvider

__all__ = [
    "GenerateRequest",
    "GenerateResult",
    "LLMProvider",
    "fallback_providers",
    "get_provider",
    "provider_named",
]


def get_provider() -> LLMProvider:
    """The configured provider, built once per process."""
    return provider_named(get_settings().llm_provider)


def fallback_providers() -> list[LLMProvider]:
    """The providers to try, in order, when the configured one is unavailable."""
    return [provider_named(name) for name in get_settings().fallback_providers]


@lru_cache
def provider_named(name: LLMProviderName) -> LLMProvider:
    """The provider of that name, configured from the settings, built once per process."""
    settings = get_settings()
    if name == LLMProviderName.template:
        from shared.llm.template import TemplateProvider

        return TemplateProvider()
    if name == LLMProviderName.openai:
        from shared.llm.openai import OpenAIProvider

        key = settings.openai_api_key
        return OpenAIProvider(settings.openai_base_url, key.get_secret_value() if key else None)
    from shared.llm.ollama import OllamaProvider

    return OllamaProvider(settings.ollama_url)
