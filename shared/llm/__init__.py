"""LLM providers behind one interface; `get_provider` picks the configured one."""

from functools import lru_cache

from shared.config import LLMProviderName, get_settings
from shared.llm.base import GenerateRequest, GenerateResult, LLMProvider

__all__ = ["GenerateRequest", "GenerateResult", "LLMProvider", "get_provider"]


@lru_cache
def get_provider() -> LLMProvider:
    """The configured provider, built once per process."""
    settings = get_settings()
    if settings.llm_provider == LLMProviderName.template:
        from shared.llm.template import TemplateProvider

        return TemplateProvider()
    if settings.llm_provider == LLMProviderName.openai:
        from shared.llm.openai import OpenAIProvider

        key = settings.openai_api_key
        return OpenAIProvider(settings.openai_base_url, key.get_secret_value() if key else None)
    from shared.llm.ollama import OllamaProvider

    return OllamaProvider(settings.ollama_url)
