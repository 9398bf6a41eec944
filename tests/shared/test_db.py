"""SQLite writers queue on the writer lock: many at once all get through, a rolled-back or
abandoned transaction gives the lock back, and a session opened inside another never waits for
the thread's own lock."""

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from shared import crud, migrate
from shared.db import make_engine
from shared.models import Job

WAIT_S = 30  # far above any write here; reached only if a writer never gets the lock
SPAWN_WAIT_S = 240  # a spawned interpreter imports Kiln first: seconds, a minute when busy


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def _insert(engine: Engine, idempotency_key: str | None = None) -> Job:
    job = Job(kind="generate", input={"prompt": "x"}, owner_id="o", idempotency_key=idempotency_key)
    with Session(engine, expire_on_commit=False) as session:
        return crud.insert_job(session=session, job=job)


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Job)).one()


def _insert_many(url: str, count: int) -> None:
    engine = make_engine(url)
    for _ in range(count):
        _insert(engine)
    engine.dispose()


def test_concurrent_writers_in_threads_and_processes_all_get_through(sqlite_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    others = [context.Process(target=_insert_many, args=(sqlite_url, 100)) for _ in range(2)]
    for process in others:
        process.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: _insert_many(sqlite_url, 25), range(8)))
    for process in others:
        process.join(SPAWN_WAIT_S)
        assert process.exitcode == 0

    assert _count(make_engine(sqlite_url)) == 400


def test_a_failed_write_gives_the_lock_back(engine: Engine) -> None:
    _insert(engine, idempotency_key="once")
    with pytest.raises(IntegrityError):
        _insert(engine, idempotency_key="once")

    other = threading.Thread(target=_insert, args=(engine,))
    other.start()
    other.join(WAIT_S)

    assert not other.is_alive()
    assert _count(engine) == 2


def test_an_abandoned_transaction_gives_the_lock_back(engine: Engine) -> None:
    session = Session(engine)
    session.add(Job(kind="generate", input={"prompt": "x"}, owner_id="o"))
    session.flush()  # the write lock is held now
    session.close()  # never committed: the connection goes back to the pool, rolled back

    other = threading.Thread(target=_insert, args=(engine,))
    other.start()
    other.join(WAIT_S)

    assert not other.is_alive()
    assert _count(engine) == 1


def test_a_session_inside_a_writing_session_does_not_wait_for_its_own_thread(
    engine: Engine,
) -> None:
    outcome: list[str] = []

    def nested() -> None:
        with Session(engine) as first:
            first.add(Job(kind="generate", input={"prompt": "x"}, owner_id="o"))
            first.flush()
            # A second connection of the same thread: SQLite's own lock decides, so it fails
            # after SQLite's busy time-out instead of hanging on the thread's own lock.
            try:
                _insert_with_timeout(engine)
                outcome.append("inserted")
            except OperationalError as exc:
                outcome.append(str(exc.orig))
            first.commit()

    worker = threading.Thread(target=nested)
    worker.start()
    worker.join(WAIT_S)

    assert not worker.is_alive()
    assert outcome == ["database is locked"]
    assert _count(engine) == 1


def _insert_with_timeout(engine: Engine) -> None:
    with Session(engine) as session:
        session.connection().exec_driver_sql("PRAGMA busy_timeout=200")
        session.add(Job(kind="generate", input={"prompt": "x"}, owner_id="o"))
        session.commit()
