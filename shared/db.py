"""The database engine (one per process) and sessions."""

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, make_url
from sqlmodel import Session, create_engine

from shared.config import driver_url, get_settings

POOL_SIZE = 20  # connections kept per process
POOL_OVERFLOW = 20  # more under bursts; with AnyIO's 40 threads a request never waits on both


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout makes writers queue, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for a SQLAlchemy URL, tuned for SQLite or PostgreSQL."""
    url = driver_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_pre_ping=True)


@lru_cache
def get_engine() -> Engine:
    """This process's engine; `dispose_engine` after a fork."""
    return make_engine(get_settings().sqlalchemy_url)


def dispose_engine() -> None:
    """Drop connections inherited from a parent process."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
        get_engine.cache_clear()


def get_session() -> Iterator[Session]:
    """A session that lives for one request or one unit of worker work."""
    with Session(get_engine(), expire_on_commit=False) as session:
        yield session


def open_session() -> Session:
    """A session for code outside a request (workers, reconciler, CLI); use as a context manager."""
    return Session(get_engine(), expire_on_commit=False)
