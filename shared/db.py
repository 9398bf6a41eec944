"""The database engine (one per process) and sessions."""

import fcntl
import os
import re
import threading
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


class WriterLock:
    """Serialises SQLite writers, across processes too, with a lock on a file beside the database.

    SQLite lets one writer in at a time and makes the others poll, sleeping up to 100 ms between
    tries, so under load some writes wait far longer than the lock is ever held. A writer here
    takes the file lock before its first write and gives it back when its transaction ends: the
    kernel queues the waiters and wakes the next at once. Reads never take it (WAL). A thread
    that already holds it (a second session opened inside a first) writes without it, under
    SQLite's own lock and time-out, so it can never wait for itself.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._holders: set[int] = set()  # threads holding it now

    def install(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)
        event.listen(engine, "reset", self._reset)
        event.listen(engine, "close", self._close)

    def _before_execute(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        info = conn.connection.info  # the pooled DB-API connection's own dict
        thread = threading.get_ident()
        if _HOLDS in info or thread in self._holders or not _WRITES.match(statement):
            return
        if (fd := info.get(_FD)) is None:
            fd = info[_FD] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        info[_HOLDS] = thread
        self._holders.add(thread)

    def _end(self, conn: Any) -> None:
        self._unlock(conn.connection.info)

    def _reset(self, _dbapi_connection: Any, record: Any, _reset_state: Any) -> None:
        self._unlock(record.info)

    def _close(self, _dbapi_connection: Any, record: Any) -> None:
        self._unlock(record.info)
        if (fd := record.info.pop(_FD, None)) is not None:
            os.close(fd)

    def _unlock(self, info: dict[str, Any]) -> None:
        if (thread := info.pop(_HOLDS, None)) is not None:
            fcntl.flock(info[_FD], fcntl.LOCK_UN)
            self._holders.discard(thread)


_WRITES = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
_FD, _HOLDS = "kiln_writer_lock_fd", "kiln_writer_lock_thread"


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
        if database and database != ":memory:":
            WriterLock(Path(database + ".writer-lock")).install(engine)
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
