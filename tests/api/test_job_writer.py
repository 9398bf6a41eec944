"""The job writer commits concurrent submits in groups: every row lands once, and a taken
idempotency key fails only its own submit."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from api.job_writer import JobWriter
from shared.db import make_engine
from shared.models import Job


def _job(key: str | None = None) -> Job:
    return Job(kind="generate", input={"prompt": "x"}, owner_id="o", idempotency_key=key)


def _outcome(writer: JobWriter, job: Job) -> str:
    try:
        writer.insert(job)
    except IntegrityError:
        return "taken"
    return "written"


def test_concurrent_inserts_all_land_and_a_taken_key_fails_alone(engine: Engine) -> None:
    writer = JobWriter(lambda: Session(engine, expire_on_commit=False))
    jobs = [_job() for _ in range(200)] + [_job("twice"), _job("twice")]

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda job: _outcome(writer, job), jobs))

    assert sorted(outcomes) == ["taken"] + ["written"] * 201
    with Session(engine) as session:
        stored = set(session.exec(select(Job.id)))
        assert session.exec(select(func.count()).select_from(Job)).one() == 201
    written = {job.id for job, outcome in zip(jobs, outcomes, strict=True) if outcome == "written"}
    assert stored == written


def test_a_failing_database_fails_the_submits_that_waited_on_it(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # never migrated
    writer = JobWriter(lambda: Session(engine, expire_on_commit=False))

    with pytest.raises(Exception, match="no such table"):
        writer.insert(_job())
