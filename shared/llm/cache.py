"""The result cache: a repeatable request (temperature 0 or a fixed seed) answered from Redis.

The cache is a side channel: when Redis fails it, the request goes to the backend as usual.
"""

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Any

import redis

from shared import keys
from shared.llm.base import ChatRequest, GenerateRequest, GenerateResult

log = logging.getLogger(__name__)


def is_repeatable(options: dict[str, Any]) -> bool:
    """Whether the backend gives the same reply every time: greedy decoding or a fixed seed."""
    return options.get("temperature") == 0 or options.get("seed") is not None


def cache_key(provider: str, request: GenerateRequest | ChatRequest) -> str:
    """The Redis key of a request's result: a digest of the provider and every request field."""
    fields = {"provider": provider, "kind": type(request).__name__, **asdict(request)}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return keys.LLM_CACHE_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


class ResultCache:
    """Finished results in Redis, each kept for `ttl_s` seconds."""

    def __init__(self, client: "redis.Redis", ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    def get(self, key: str) -> GenerateResult | None:
        """The cached result, marked `cached`, or None on a miss."""
        try:
            stored = self._redis.get(key)
        except redis.RedisError:
            log.warning("the result cache could not be read; asking the backend", exc_info=True)
            return None
        if stored is None:
            return None
        try:
            return GenerateResult(**{**json.loads(stored), "cached": True})
        except (ValueError, TypeError):  # written by a Kiln whose result had other fields
            return None

    def put(self, key: str, result: GenerateResult) -> None:
        """Keep `result` for the TTL."""
        try:
            self._redis.set(key, json.dumps(result.to_dict()), ex=self._ttl_s)
        except redis.RedisError:
            log.warning("the result cache could not be written", exc_info=True)
