"""Chaos: Redis and PostgreSQL restarted mid-load."""

from pathlib import Path

import pytest

from tests.chaos.stacks import chaos_stack, survive
from tests.conftest import PG_ENV
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Receiver


def test_a_restarted_redis_without_persistence(
    tmp_path: Path, backend: str, ollama: FakeOllama, receiver: Receiver
) -> None:
    with chaos_stack(tmp_path, backend, ollama) as chaos:

        def restart() -> None:
            chaos.redis.stop()
            chaos.redis.start()

        survive(chaos, receiver, "Redis restarted empty", restart)


def test_a_restarted_postgresql(
    tmp_path: Path, backend: str, ollama: FakeOllama, receiver: Receiver
) -> None:
    if backend != "postgresql":
        pytest.skip(f"{PG_ENV} is not set")
    with chaos_stack(tmp_path, backend, ollama, proxied=True) as chaos:
        proxy = chaos.database_proxy
        assert proxy is not None
        survive(chaos, receiver, "PostgreSQL restarted", lambda: proxy.outage(3.0))
