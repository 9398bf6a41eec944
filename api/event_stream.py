"""A job's events as Server-Sent Events: from its Redis stream, or rebuilt from its row."""

import asyncio
import logging
from collections.abc import AsyncIterator

from redis.exceptions import RedisError
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from shared import crud, events
from shared.broker import get_async_redis
from shared.db import open_session
from shared.events import Event
from shared.models import Job
from shared.states import TERMINAL

log = logging.getLogger(__name__)

BLOCK_MS = 2000  # how long one read waits before the job row is consulted


def _sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(data=event.to_json(), event=event.type, id=event.id)


def _load(job_id: str) -> Job | None:
    with open_session() as session:
        return crud.get_job(session=session, job_id=job_id)


def _from_row(job: Job, after: str, resumed: bool) -> list[Event]:
    """The row's events after `after`; a resumed client always gets the terminal one."""
    replayed = events.replay_from_row(job)
    later = [event for event in replayed if not resumed or events.is_after(event.id, after)]
    if resumed and not any(event.is_terminal for event in later):
        later.append(replayed[-1])
    return later


async def job_events(job_id: str, last_event_id: str | None) -> AsyncIterator[bytes]:
    """The job's events as SSE, each with its `id:`; the events of one read go out as one
    write."""
    async for batch in event_batches(job_id, last_event_id):
        yield b"".join(_sse(event).encode() for event in batch)


async def event_batches(job_id: str, last_event_id: str | None) -> AsyncIterator[list[Event]]:
    """Every event after `last_event_id` (all when None), ending with the terminal one; each
    batch is what one read of the stream (or the row) gave, so that a route can send it in one
    write: a write per event was a quarter of the API's work on an unpaced stream."""
    redis = get_async_redis()
    cursor = last_event_id or "0-0"
    resumed = last_event_id is not None
    while True:
        try:
            batch = await events.read_after(redis, job_id, cursor, block_ms=BLOCK_MS)
        except RedisError:
            log.warning("event stream of job %s unreadable; falling back to its row", job_id)
            batch = []
            await asyncio.sleep(BLOCK_MS / 1000)
        if batch:
            ends = next((i for i, event in enumerate(batch) if event.is_terminal), None)
            if ends is not None:
                yield batch[: ends + 1]
                return
            yield batch
            cursor, resumed = batch[-1].id, True
            continue
        # Nothing new: the stream may have expired, been flushed, or lost its final event.
        job = await run_in_threadpool(_load, job_id)
        if job is None or job.status not in TERMINAL:
            continue
        yield _from_row(job, cursor, resumed)
        return


async def wait_until_done(job_id: str, timeout_s: float) -> bool:
    """Whether the job reached a terminal status within `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in event_batches(job_id, None):
                pass
    except TimeoutError:
        return False
    return True
