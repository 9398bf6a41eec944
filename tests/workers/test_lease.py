"""The lease keeper, in this process against a real database and Redis: it renews by the lease
the row holds, and tells the job to stop once the job is canceled or moved on."""

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from shared import crud, keys
from shared.broker import get_redis, reset_redis
from shared.config import get_settings
from shared.db import dispose_engine
from shared.models import Job, utcnow
from shared.states import JobStatus
from tests.conftest import own_redis
from tests.harness import eventually
from workers import reconciler
from workers.lease import LeaseKeeper

LEASE_S = 30.0  # long, so that only the keeper's own schedule renews it


@pytest.fixture
def stores(
    engine: Engine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """This process's settings point at the test's database and a Redis of its own."""
    with own_redis(tmp_path / "redis") as server:
        monkeypatch.setenv("KILN_DATABASE_URL", database_url)
        monkeypatch.setenv("KILN_REDIS_URL", server.url)
        get_settings.cache_clear()
        dispose_engine()
        reset_redis()
        yield engine
        reset_redis()
        dispose_engine()
    get_settings.cache_clear()


def _running(engine: Engine, lease_expires_at: datetime) -> Job:
    job = Job(kind="generate", input={"prompt": "x"}, owner_id="o")
    with Session(engine, expire_on_commit=False) as session:
        crud.insert_job(session=session, job=job)
        moved = crud.move_job(
            session=session,
            job_id=job.id,
            to=JobStatus.running,
            started_at=utcnow(),
            lease_expires_at=lease_expires_at,
            worker="w@test",
        )
        session.commit()
    assert moved is not None
    return moved


def _lease_of(engine: Engine, job_id: str) -> datetime | None:
    with Session(engine) as session:
        job = crud.get_job(session=session, job_id=job_id)
        assert job is not None
        return job.lease_expires_at


def _renewed(engine: Engine, job_id: str) -> bool:
    """The row's lease was pushed a whole lease on (its first one was far shorter)."""
    until = _lease_of(engine, job_id)
    return until is not None and until > utcnow() + timedelta(seconds=LEASE_S * 2 / 3)


def test_a_lease_claimed_a_while_ago_is_renewed_at_the_first_check(stores: Engine) -> None:
    # As if the process had been held up for most of the lease between its claim and its run.
    claimed = _running(stores, lease_expires_at=utcnow() + timedelta(seconds=LEASE_S / 3))
    assert claimed.lease_expires_at is not None
    with LeaseKeeper(claimed.id, claimed.attempt, LEASE_S, claimed.lease_expires_at) as lease:
        eventually(lambda: _renewed(stores, claimed.id), "the lease renewed")
        assert not lease.lost.is_set()
    until = _lease_of(stores, claimed.id)
    assert until is not None
    # Renewed (a whole lease before its new end) while the first lease still held.
    assert until - timedelta(seconds=LEASE_S) < claimed.lease_expires_at


def test_a_fresh_lease_waits_for_a_third_of_its_length(stores: Engine) -> None:
    claimed = _running(stores, lease_expires_at=utcnow() + timedelta(seconds=LEASE_S))
    other = _running(stores, lease_expires_at=utcnow() + timedelta(seconds=1))
    with (
        LeaseKeeper(claimed.id, claimed.attempt, LEASE_S, claimed.lease_expires_at),
        LeaseKeeper(other.id, other.attempt, LEASE_S, other.lease_expires_at),
    ):
        # Both keepers check on one thread, in order: once the other's lease is renewed, the
        # fresh one has been looked at too.
        eventually(lambda: _renewed(stores, other.id), "the other lease renewed")
        assert _lease_of(stores, claimed.id) == claimed.lease_expires_at


def test_a_hand_off_lease_is_cut_to_the_keepers_length(stores: Engine) -> None:
    handed = _running(stores, lease_expires_at=utcnow() + timedelta(seconds=20 * LEASE_S))
    assert handed.lease_expires_at is not None
    with LeaseKeeper(handed.id, handed.attempt, LEASE_S, handed.lease_expires_at) as lease:
        eventually(lambda: _lease_of(stores, handed.id) != handed.lease_expires_at, "lease cut")
        assert not lease.lost.is_set()
    cut = _lease_of(stores, handed.id)
    assert cut is not None
    assert cut <= utcnow() + timedelta(seconds=LEASE_S)


def test_a_canceled_or_moved_on_job_is_lost(stores: Engine) -> None:
    canceled = _running(stores, lease_expires_at=utcnow() + timedelta(seconds=LEASE_S))
    retried = _running(stores, lease_expires_at=utcnow() + timedelta(seconds=1))
    assert reconciler.retry(retried) == 1  # as when its lease ran out
    get_redis().set(keys.job_cancel(canceled.id), 1)

    with (
        LeaseKeeper(canceled.id, canceled.attempt, LEASE_S, canceled.lease_expires_at) as first,
        LeaseKeeper(retried.id, retried.attempt, LEASE_S, retried.lease_expires_at) as second,
    ):
        eventually(first.lost.is_set, "the canceled job told to stop")
        eventually(second.lost.is_set, "the retried job told to stop")
