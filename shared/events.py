"""Per-job event streams in Redis: status changes, progress and token deltas, in order.

Each job has one bounded, expiring stream. Writers append; the SSE endpoint reads from an id on.
The job row keeps the durable summary, so a finished job's events can be rebuilt from it.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.asyncio

from shared import keys
from shared.models import Job
from shared.states import TERMINAL, JobStatus

STREAM_MAXLEN = 20_000  # events kept per job (approximate trimming)
STREAM_TTL_S = 24 * 3600  # a job's stream expires this long after its last status change

EVENT_STATUS = "status"  # {"status", "attempt"}; a terminal one also has "result" or "error"
EVENT_PROGRESS = "progress"  # free-form progress of a running job
EVENT_TOKEN = "token"  # {"delta": "..."}: text generated so far, in order


@dataclass(frozen=True)
class Event:
    """One event of a job, as the SSE endpoint sends it."""

    id: str
    type: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.type == EVENT_STATUS and self.data.get("status") in TERMINAL

    def to_json(self) -> str:
        return json.dumps(self.data, separators=(",", ":"), default=str)


def status_data(job: Job) -> dict[str, Any]:
    """The data of the status event that a job in its current state emits."""
    data: dict[str, Any] = {"status": job.status, "attempt": job.attempt}
    if job.status == JobStatus.succeeded:
        data["result"] = job.result
    elif job.status in TERMINAL:
        data["error"] = job.error
    return data


def _fields(event_type: str, data: dict[str, Any]) -> dict[Any, Any]:
    return {"type": event_type, "data": json.dumps(data, separators=(",", ":"), default=str)}


def _add(
    target: "redis.Redis | redis.client.Pipeline",
    job_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    refresh: bool,
) -> None:
    stream = keys.job_events(job_id)
    target.xadd(stream, _fields(event_type, data), maxlen=STREAM_MAXLEN, approximate=True)
    if refresh:
        target.expire(stream, STREAM_TTL_S)


def append(
    client: "redis.Redis", job_id: str, event_type: str, data: dict[str, Any], *, refresh: bool
) -> None:
    """Append one event; `refresh` also pushes the stream's expiry forward."""
    pipe = client.pipeline(transaction=False)
    _add(pipe, job_id, event_type, data, refresh=refresh)
    pipe.execute()


def queue_status(pipe: "redis.client.Pipeline", job: Job) -> None:
    """Add the job's status event to a pipeline the caller executes."""
    _add(pipe, job.id, EVENT_STATUS, status_data(job), refresh=True)


def append_tokens(client: "redis.Redis", job_id: str, deltas: list[str]) -> None:
    """Append token events, one per delta, in one round trip."""
    pipe = client.pipeline(transaction=False)
    queue_tokens(pipe, job_id, deltas)
    pipe.execute()


def queue_tokens(pipe: "redis.client.Pipeline", job_id: str, deltas: list[str]) -> None:
    """Add token events, one per delta, to a pipeline the caller executes."""
    for delta in deltas:
        _add(pipe, job_id, EVENT_TOKEN, {"delta": delta}, refresh=False)


def _decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return Event(id=raw_id, type=fields[b"type"].decode(), data=json.loads(fields[b"data"]))


async def read_after(
    client: "redis.asyncio.Redis", job_id: str, after: str, *, block_ms: int
) -> list[Event]:
    """Events after id `after`, waiting up to `block_ms` for the first one."""
    reply: Any = await client.xread({keys.job_events(job_id): after}, block=block_ms, count=500)
    return [_decode(entry_id, fields) for _, entries in reply for entry_id, fields in entries]


async def stream_exists(client: "redis.asyncio.Redis", job_id: str) -> bool:
    return bool(await client.exists(keys.job_events(job_id)))


def _stream_id(moment: datetime | None, seq: int) -> str:
    millis = int(moment.timestamp() * 1000) if moment else 0
    return f"{millis}-{seq}"


def replay_from_row(job: Job) -> list[Event]:
    """The events of a job rebuilt from its row, for when its stream has expired or was lost."""
    events = [Event(_stream_id(job.created_at, 0), EVENT_STATUS, {"status": "queued"})]
    if job.started_at is not None:
        running = {"status": JobStatus.running.value, "attempt": job.attempt}
        events.append(Event(_stream_id(job.started_at, 0), EVENT_STATUS, running))
    if job.status in TERMINAL:
        events.append(Event(_stream_id(job.finished_at, 0), EVENT_STATUS, status_data(job)))
    return events


def is_after(event_id: str, after: str) -> bool:
    """Whether stream id `event_id` comes after `after` (ids are `<millis>-<seq>`)."""

    def parse(value: str) -> tuple[int, int]:
        millis, _, seq = value.partition("-")
        return int(millis), int(seq or 0)

    return parse(event_id) > parse(after)
