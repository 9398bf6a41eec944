"""Batch claims of webhook deliveries as the database enforces them: no delivery in two batches,
an abandoned claim taken back once its lease ends, and a stale batch's record refused."""

import threading
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from shared import crud
from shared.models import Delivery, utcnow
from shared.states import DeliveryStatus
from shared.webhooks.batch import AttemptRecord, ClaimedDelivery, Outcome

WORKERS = 4
BATCH = 7  # not a divisor of the backlog, so the last claims come back short


def _pending(session: Session, count: int, attempts: int = 0) -> list[str]:
    deliveries = [
        Delivery(
            job_id=f"job{index % 3}",
            owner_id="key_a",
            event_id=f"msg_{index}",
            event_type="job.succeeded",
            url="http://127.0.0.1:9/hook",
            payload="{}",
            next_attempt_at=utcnow(),
            attempts=attempts,
        )
        for index in range(count)
    ]
    session.add_all(deliveries)
    session.commit()
    return [delivery.id for delivery in deliveries]


def _claim(session: Session, until: datetime, now: datetime | None = None) -> list[str]:
    claimed = crud.claim_due_deliveries(
        session=session, now=now or utcnow(), until=until, limit=BATCH
    )
    return [delivery.id for delivery in claimed]


def _succeeded(delivery: ClaimedDelivery) -> Outcome:
    now = utcnow()
    attempt = AttemptRecord(1, now, delivery.url, 200, 1.0, "ok", None, "succeeded")
    return Outcome(delivery, DeliveryStatus.succeeded, 1, None, 200, None, now, attempt)


def test_concurrent_claims_never_take_the_same_delivery(engine: Engine) -> None:
    with Session(engine) as session:
        ids = _pending(session, 60)
    start = threading.Barrier(WORKERS)
    taken: list[list[str]] = [[] for _ in range(WORKERS)]

    def worker(index: int) -> None:
        with Session(engine) as session:
            start.wait()
            while claimed := _claim(session, utcnow() + timedelta(seconds=60)):
                taken[index].extend(claimed)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    counts = Counter(delivery_id for claimed in taken for delivery_id in claimed)
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}


def test_an_abandoned_claim_is_taken_back_once_its_lease_ends(engine: Engine) -> None:
    now = utcnow()
    with Session(engine) as session:
        (delivery_id,) = _pending(session, 1)
        stale_token = now + timedelta(seconds=30)
        (stale,) = crud.claim_due_deliveries(session=session, now=now, until=stale_token, limit=1)
        assert _claim(session, now + timedelta(seconds=30)) == []
        assert crud.release_stalled_deliveries(session=session, now=now) == 0

        later = now + timedelta(seconds=31)
        assert crud.release_stalled_deliveries(session=session, now=later) == 1
        token = later + timedelta(seconds=30)
        (claimed,) = crud.claim_due_deliveries(session=session, now=later, until=token, limit=1)
        refused = crud.record_outcomes(
            session=session, token=stale_token, outcomes=[_succeeded(stale)], gone_reason="-"
        )
        assert refused == []
        held = crud.get_delivery(session=session, delivery_id=delivery_id)
        assert held is not None
        assert (held.status, held.locked_until) == ("delivering", token)

        stored = crud.record_outcomes(
            session=session, token=token, outcomes=[_succeeded(claimed)], gone_reason="-"
        )
        delivery = crud.get_delivery(session=session, delivery_id=delivery_id)
        attempts = crud.attempts_of(session=session, delivery_ids=[delivery_id])[delivery_id]

    assert claimed.id == delivery_id
    assert [outcome.delivery.id for outcome in stored] == [delivery_id]
    assert delivery is not None
    assert (delivery.status, delivery.attempts, delivery.locked_until) == ("succeeded", 1, None)
    assert [(attempt.number, attempt.status_code) for attempt in attempts] == [(1, 200)]


def test_a_retry_is_claimed_only_when_it_is_due(engine: Engine) -> None:
    now = utcnow()
    with Session(engine) as session:
        (retry,) = _pending(session, 1, attempts=2)
        delivery = crud.get_delivery(session=session, delivery_id=retry)
        assert delivery is not None
        delivery.next_attempt_at = now + timedelta(seconds=5)
        session.add(delivery)
        session.commit()
        (new,) = _pending(session, 1)

        assert _claim(session, now + timedelta(seconds=60), now) == [new]
        assert crud.first_due_delivery(session=session, now=now) is None
        later = now + timedelta(seconds=6)
        assert crud.first_due_delivery(session=session, now=later) == retry
        assert _claim(session, later + timedelta(seconds=60), later) == [retry]
