"""The job state machine as the database enforces it: one winner per transition, terminal
states final."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from shared import crud, migrate
from shared.db import make_engine
from shared.models import Job
from shared.states import TERMINAL, TRANSITIONS, JobStatus


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def _job(session: Session, owner_id: str = "key_a", idempotency_key: str | None = None) -> Job:
    job = Job(
        kind="generate", input={"prompt": "x"}, owner_id=owner_id, idempotency_key=idempotency_key
    )
    return crud.insert_job(session=session, job=job)


def _move(*, session: Session, **change: Any) -> bool:
    """One committed status change; whether it won."""
    moved = crud.move_job(session=session, **change)
    session.commit()
    return moved is not None


def test_terminal_statuses_have_no_way_out() -> None:
    assert all(TRANSITIONS[status] == frozenset() for status in TERMINAL)
    assert set(TRANSITIONS) == set(JobStatus)


def test_only_one_claim_wins(session: Session) -> None:
    job = _job(session)

    first = _move(session=session, job_id=job.id, to=JobStatus.running)
    second = _move(session=session, job_id=job.id, to=JobStatus.running)

    assert (first, second) == (True, False)


@pytest.mark.parametrize("final", sorted(TERMINAL))
def test_a_terminal_job_never_changes(session: Session, final: JobStatus) -> None:
    job = _job(session)
    _move(session=session, job_id=job.id, to=JobStatus.running)
    assert _move(session=session, job_id=job.id, to=final)

    for target in JobStatus:
        assert not _move(session=session, job_id=job.id, to=target)
    stored = crud.get_job(session=session, job_id=job.id)
    assert stored is not None
    assert stored.status == final


def test_a_stale_attempt_cannot_finish_the_job(session: Session) -> None:
    job = _job(session)
    _move(session=session, job_id=job.id, to=JobStatus.running)
    _move(session=session, job_id=job.id, to=JobStatus.queued, expected_attempt=1, attempt=2)
    _move(session=session, job_id=job.id, to=JobStatus.running)

    stale = _move(session=session, job_id=job.id, to=JobStatus.succeeded, expected_attempt=1)
    current = _move(session=session, job_id=job.id, to=JobStatus.succeeded, expected_attempt=2)

    assert (stale, current) == (False, True)


def test_an_idempotency_key_is_unique_per_owner(session: Session) -> None:
    _job(session, idempotency_key="k")
    _job(session, idempotency_key="k", owner_id="key_b")

    with pytest.raises(IntegrityError):
        _job(session, idempotency_key="k")


def test_the_admin_key_survives_racing_writers(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda _: _write_admin(engine), range(6)))
        with Session(engine) as session:
            assert crud.get_active_key(session=session, key="kiln_admin-key-for-tests") is not None
    finally:
        engine.dispose()


def _write_admin(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        crud.ensure_admin_key(session=session, key="kiln_admin-key-for-tests")
