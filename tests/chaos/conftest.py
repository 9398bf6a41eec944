"""The chaos tests' fixtures: one database backend (PostgreSQL when there is one), a slowish
fake Ollama and a webhook receiver per test."""

import os
from collections.abc import Iterator

import pytest

from tests.chaos.stacks import TOKEN_DELAY_S
from tests.conftest import PG_ENV
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Receiver, receiving


@pytest.fixture(scope="module")
def backend() -> str:
    """PostgreSQL when there is one (what production runs), else SQLite."""
    return "postgresql" if os.environ.get(PG_ENV) else "sqlite"


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llama3.2:1b"], token_delay=TOKEN_DELAY_S) as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running
