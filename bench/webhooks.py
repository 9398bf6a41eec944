"""Webhook deliveries per second: Kiln's callbacks worker draining a backlog, against a plain
asyncio httpx loop posting the same signed bodies, both to one loopback receiver, in one run.

    uv run python -m bench.webhooks [--reps 3] [--deliveries 5000] [--threads 8] [--in-flight 8]
                                    [--profile N [--profile-worker M]] [--keep]

Each repetition gets a fresh data dir, embedded Redis, migrated SQLite database and receiver
(`receiver_app` below: a raw ASGI app under uvicorn, in its own process), then measures, in
alternating order:
- kiln: `--deliveries` rows are written with `outbox.delivery_for` for a few succeeded template
  jobs and dispatched with `dispatch.dispatch_delivery` (one wake-up message: each task sends
  a batch and wakes the next) while no callbacks worker runs; then one
  worker starts as `kiln up` starts it (`kiln worker --queues callbacks --concurrency 8 --pool
  threads`) and the database is polled until every row is `succeeded`. The drain time runs from
  the receiver's first request to the last row's `finished_at`, so the worker's boot is left out
  (it is shown apart, as "spawn to drained"); its CPU is read from /proc from the first claim on.
- anchor: the same event ids and bodies, signed per request with standardwebhooks, posted by one
  httpx.AsyncClient on plain asyncio with `--in-flight` requests at a time (the worker's threads).
The receiver must see every `webhook-id` at least once (and sampled signatures must verify);
duplicates are counted.

`--profile N` then shows where the worker's time goes: about N deliveries through
`workers.flows.deliver.deliver` in this process, batch after batch, timed and then under
cProfile (this thread and the sender's event loop thread); `--profile-worker M` adds M
drained by a worker process whose threads are sampled (`CpuSampler`), which shows Celery's share
and each thread's CPU.
"""

import argparse
import asyncio
import atexit
import cProfile
import io
import json
import math
import os
import pstats
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from standardwebhooks import Webhook

from bench.common import (
    PYTHON,
    ROOT,
    Child,
    CpuMeter,
    bench_summary,
    fresh_redis,
    kiln_env,
    machine,
    median,
    running,
    table,
    tree,
    uvicorn_argv,
    wait_quiet,
    wait_uvicorn,
    write_summaries,
)
from shared import crud, migrate
from shared.broker import get_redis, reset_redis
from shared.cli.stack import CALLBACK_THREADS, KILN
from shared.config import Settings, get_settings
from shared.db import get_engine, open_session
from shared.dispatch import dispatch_delivery
from shared.embedded_redis import free_port
from shared.llm.base import GenerateRequest
from shared.llm.template import TemplateProvider
from shared.models import Delivery, Job, utcnow
from shared.queues import QUEUE_CALLBACKS
from shared.states import DeliveryStatus, JobStatus
from shared.webhooks import outbox
from shared.webhooks.signing import USER_AGENT

HOOK_PREFIX = "/hook/"  # + side: where that side's deliveries are posted
STATS_PREFIX = "/stats/"  # + side: what the receiver saw of them, as JSON
SIDES = ("kiln", "anchor")
SAMPLED_REQUESTS = 20  # per side, kept whole so their signatures can be checked afterwards
ACK = b'{"received":true}'
POLL_S = 0.05
PROMPTS = (  # one succeeded template job each; the deliveries cycle through them
    "Say hello to the benchmark",
    "Summarise why webhooks are retried from the database rather than from Redis",
    "List three colours",
    "Write one sentence about kilns, the pottery kind, for a product page that sells them",
)
WORKER_NAME = "worker-callbacks@%h"
PROFILE_WARMUP = 50  # deliveries before the in-process timing, to open connections and caches


# --- the receiver (runs in its own process under uvicorn) -------------------------------------

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class Tally:
    """What one side's hook path received."""

    count: int = 0
    first: float = 0.0  # epoch seconds at the first request's arrival
    last: float = 0.0
    ids: Counter[str] = field(default_factory=Counter)  # webhook-id → requests carrying it
    samples: list[dict[str, Any]] = field(default_factory=list)  # {"headers", "body"}

    def as_json(self) -> bytes:
        fields = ("count", "first", "last", "ids", "samples")
        return json.dumps({name: getattr(self, name) for name in fields}).encode()


class Receiver:
    """Answers every POST to /hook/<side> with 200 and counts it; GET /stats/<side> tells."""

    def __init__(self) -> None:
        self.tallies: defaultdict[str, Tally] = defaultdict(Tally)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "POST" and path.startswith(HOOK_PREFIX):
            body = await _read_body(receive)
            self._count(path.removeprefix(HOOK_PREFIX), scope["headers"], body)
            await _reply(send, 200, ACK)
        elif method == "GET" and path.startswith(STATS_PREFIX):
            await _reply(send, 200, self.tallies[path.removeprefix(STATS_PREFIX)].as_json())
        else:
            await _reply(send, 404, b"{}")

    def _count(self, side: str, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        now = time.time()
        tally = self.tallies[side]
        tally.count += 1
        tally.first = tally.first or now
        tally.last = now
        webhook_id = next((value for name, value in raw_headers if name == b"webhook-id"), b"")
        tally.ids[webhook_id.decode()] += 1
        if len(tally.samples) < SAMPLED_REQUESTS:
            headers = {name.decode("latin-1"): value.decode("latin-1")
                       for name, value in raw_headers}  # fmt: skip
            tally.samples.append({"headers": headers, "body": body.decode()})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def receiver_app() -> Receiver:
    """The uvicorn factory: `uvicorn bench.webhooks:receiver_app --factory`."""
    return Receiver()


@dataclass
class Received:
    """A side's tally as the benchmark reads it back from the receiver."""

    count: int
    first: float
    last: float
    ids: dict[str, int]
    samples: list[dict[str, Any]]

    @classmethod
    def fetch(cls, base_url: str, side: str) -> "Received":
        data = httpx.get(f"{base_url}{STATS_PREFIX}{side}", timeout=30.0).raise_for_status()
        return cls(**data.json())


# --- one repetition's Kiln: database, backlog, receiver ---------------------------------------


@dataclass(frozen=True)
class Backlog:
    """The pending deliveries both sides send: ids in the table, and what each one posts."""

    ids: list[str]
    bodies: list[tuple[str, str]]  # (event id, payload), in the order of `ids`
    secret: str  # the owner's signing secret


@dataclass
class Stage:
    """What a repetition runs against."""

    data_dir: Path
    env: dict[str, str]
    receiver: Child
    receiver_url: str
    redis_pid: int
    backlog: Backlog

    def hook_url(self, side: str) -> str:
        return f"{self.receiver_url}{HOOK_PREFIX}{side}"


def use_kiln(env: dict[str, str]) -> Settings:
    """Point this process's Kiln settings, database engine and Redis client at `env`."""
    os.environ.update(env)
    if get_engine.cache_info().currsize:
        get_engine().dispose()  # the previous repetition's database is about to be deleted
    if get_redis.cache_info().currsize:
        get_redis().close()
    get_engine.cache_clear()
    reset_redis()
    get_settings.cache_clear()
    return get_settings()


def _template_job(owner_id: str, prompt: str, webhook_url: str) -> Job:
    """A generate job that the template provider finished, as a worker leaves it."""
    result = TemplateProvider().generate(
        GenerateRequest(prompt=prompt, model="template"),
        on_token=lambda _token: None,
        should_stop=lambda: False,
    )
    now = utcnow()
    return Job(
        kind="generate",
        status=JobStatus.succeeded,
        input={"prompt": prompt},
        result=result.to_dict(),
        owner_id=owner_id,
        webhook_url=webhook_url,
        started_at=now,
        finished_at=now,
    )


def write_backlog(settings: Settings, webhook_url: str, count: int) -> Backlog:
    """`count` pending job.succeeded deliveries, written as `lifecycle` writes them."""
    assert settings.admin_api_key is not None
    with open_session() as session:
        admin = crud.ensure_admin_key(
            session=session, key=settings.admin_api_key.get_secret_value()
        )
        assert admin.webhook_secret is not None
        jobs = [
            crud.insert_job(session=session, job=_template_job(admin.id, prompt, webhook_url))
            for prompt in PROMPTS
        ]
        deliveries: list[Delivery] = []
        for index in range(count):
            delivery = outbox.delivery_for(jobs[index % len(jobs)], outbox.JOB_SUCCEEDED, settings)
            assert delivery is not None
            deliveries.append(delivery)
        session.add_all(deliveries)
        session.commit()
    bodies = [(delivery.event_id, delivery.payload) for delivery in deliveries]
    return Backlog([delivery.id for delivery in deliveries], bodies, admin.webhook_secret)


@contextmanager
def staged(args: argparse.Namespace, count: int, prefix: str) -> Iterator[Stage]:
    """A fresh data dir, Redis, migrated database, receiver and backlog of `count` rows."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with fresh_redis(data_dir) as server:
            assert server.process is not None
            env = kiln_env(data_dir, server.url) | {"KILN_CALLBACK_ALLOW_PRIVATE": "true"}
            settings = use_kiln(env)
            migrate.upgrade(settings.sqlalchemy_url)
            port = free_port()
            argv = uvicorn_argv("bench.webhooks:receiver_app", port, 1)
            with running("receiver", argv, env={}, log_dir=data_dir / "logs") as receiver:
                base_url = f"http://127.0.0.1:{port}"
                wait_uvicorn(receiver, f"{base_url}/healthz", 1)
                backlog = write_backlog(settings, f"{base_url}{HOOK_PREFIX}kiln", count)
                yield Stage(data_dir, env, receiver, base_url, server.process.pid, backlog)
    finally:
        if args.keep:
            print(f"  kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    """One side in one repetition."""

    side: str
    rate: float  # deliveries/s: count over the drain time
    drain_s: float  # first request at the receiver → last delivery done
    spawn_s: float  # Kiln: worker spawned → every row succeeded (its boot included)
    cpu_ms: float  # the worker process's (Kiln) or the anchor loop's CPU per delivery
    receiver_cpu_ms: float
    redis_cpu_ms: float
    duplicates: int  # requests beyond the first for a webhook-id
    other_cpu_pct: float  # CPU used by other programs meanwhile, in percent of the machine

    def row(self) -> list[object]:
        return [self.side, *(_shown(getattr(self, name)) for name in FIELDS)]


def _shown(value: object) -> object:
    """NaN (a column that does not apply to the side) as a dash."""
    return "-" if isinstance(value, float) and math.isnan(value) else value


FIELDS = ["rate", "drain_s", "spawn_s", "cpu_ms", "receiver_cpu_ms", "redis_cpu_ms"]
FIELDS += ["duplicates", "other_cpu_pct"]
HEADERS = ["side", "deliveries/s", "drain s", "spawn to drained s", "sender CPU ms/delivery"]
HEADERS += ["receiver CPU ms/delivery", "Redis CPU ms/delivery", "duplicates"]
HEADERS += ["other programs' CPU %"]


def verify(stage: Stage, side: str) -> Received:
    """Every event id arrived, nothing unknown did, and sampled signatures check out."""
    received = Received.fetch(stage.receiver_url, side)
    expected = {event_id for event_id, _body in stage.backlog.bodies}
    missing = expected - received.ids.keys()
    unknown = received.ids.keys() - expected
    if missing or unknown:
        raise RuntimeError(f"{side}: {len(missing)} event ids never arrived, {len(unknown)} "
                           f"unknown ones did (see {stage.data_dir})")  # fmt: skip
    webhook = Webhook(stage.backlog.secret)
    for sample in received.samples:
        webhook.verify(sample["body"], sample["headers"])  # raises on a bad signature
    return received


def _epoch(stored: str) -> float:
    """A timestamp as SQLite holds it (UTC, no zone) in epoch seconds."""
    return datetime.fromisoformat(stored).replace(tzinfo=UTC).timestamp()


class DeliveryTable:
    """Reads the deliveries straight from the SQLite file, read-only."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def statuses(self) -> Counter[str]:
        query = "SELECT status, count(*) FROM deliveries GROUP BY status"
        return Counter(dict(self.connection.execute(query)))

    def last_finish(self) -> float:
        (stored,) = self.connection.execute("SELECT max(finished_at) FROM deliveries").fetchone()
        return _epoch(stored)

    def attempts(self) -> int:
        return int(self.connection.execute("SELECT count(*) FROM delivery_attempts").fetchone()[0])

    def an_error(self) -> str:
        query = "SELECT last_error FROM deliveries WHERE status = 'failed' LIMIT 1"
        return str(self.connection.execute(query).fetchone()[0])


@dataclass
class Drained:
    """How a callbacks worker worked through the pending rows."""

    spawn_s: float  # worker spawned → every row done
    used: dict[str, float]  # CpuMeter seconds from the first claim on
    measured: int  # rows finished while the meter ran


def worker_argv(threads: int) -> list[str]:
    """The callbacks worker as `kiln up` starts it (shared/cli/stack.py)."""
    argv = [*KILN, "worker", "--queues", QUEUE_CALLBACKS, "--concurrency", str(threads)]
    return [*argv, "--pool", "threads", "--name", WORKER_NAME]


def publish(ids: list[str]) -> None:
    """Publish each delivery's message, as `lifecycle` does after its commit."""
    published = sum(dispatch_delivery(delivery_id) for delivery_id in ids)
    if published != len(ids):
        raise RuntimeError(f"only {published} of {len(ids)} deliveries were published")


def drain(
    stage: Stage, argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> Drained:
    """Start a callbacks worker (`argv`) and wait until no row is pending or delivering."""
    rows = DeliveryTable(stage.data_dir / "kiln.db")
    waiting = rows.statuses()[DeliveryStatus.pending]
    spawned = time.perf_counter()
    logs, env = stage.data_dir / "logs", stage.env | (env or {})
    with running("worker-callbacks", argv, env=env, log_dir=logs) as worker:
        groups = {"worker": tree(worker.pid), "receiver": [stage.receiver.pid]}
        meter = CpuMeter({**groups, "redis": [stage.redis_pid]})
        done_at_start: int | None = None
        deadline = time.monotonic() + timeout
        while True:
            statuses = rows.statuses()
            done = statuses[DeliveryStatus.succeeded] + statuses[DeliveryStatus.failed]
            if done_at_start is None and statuses[DeliveryStatus.pending] < waiting:
                meter.start()  # the first claim: from here on the worker is delivering
                done_at_start = done
            if done >= sum(statuses.values()):
                break
            if worker.process.poll() is not None:
                raise RuntimeError(f"the callbacks worker exited; see {worker.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"deliveries still undone after {timeout}s: {dict(statuses)}")
            time.sleep(POLL_S)
        spawn_s = time.perf_counter() - spawned
        used = meter.stop()
    if statuses[DeliveryStatus.failed]:
        raise RuntimeError(f"{statuses[DeliveryStatus.failed]} deliveries failed, e.g. "
                           f"{rows.an_error()}")  # fmt: skip
    rows.connection.close()
    return Drained(spawn_s, used, done - (done_at_start or 0))


def run_kiln(args: argparse.Namespace, stage: Stage) -> Sample:
    """Publish the backlog, start one callbacks worker, wait for every row to succeed."""
    count = len(stage.backlog.ids)
    publish(stage.backlog.ids)
    wait_quiet()
    drained = drain(stage, worker_argv(args.threads), args.timeout)
    received = verify(stage, "kiln")
    rows = DeliveryTable(stage.data_dir / "kiln.db")
    drain_s = rows.last_finish() - received.first
    if (attempts := rows.attempts()) != count:
        print(f"  kiln: {attempts} attempts recorded for {count} deliveries", flush=True)
    rows.connection.close()
    used, measured = drained.used, drained.measured
    return Sample(
        side="kiln",
        rate=count / drain_s,
        drain_s=drain_s,
        spawn_s=drained.spawn_s,
        cpu_ms=used["worker"] / measured * 1000,
        receiver_cpu_ms=used["receiver"] / measured * 1000,
        redis_cpu_ms=used["redis"] / measured * 1000,
        duplicates=received.count - len(received.ids),
        other_cpu_pct=used["other_pct"],
    )


async def _post_all(url: str, backlog: Backlog, in_flight: int, timeout: float) -> float:
    """Post every body, signed afresh, `in_flight` at a time; returns the seconds it took."""
    webhook = Webhook(backlog.secret)
    todo = iter(backlog.bodies)  # shared by the lanes: each takes the next body when free
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    timeouts = httpx.Timeout(15.0, connect=5.0)  # Kiln's default webhook time-outs
    async with httpx.AsyncClient(limits=limits, timeout=timeouts, trust_env=False) as client:

        async def lane() -> None:
            for event_id, body in todo:
                now = datetime.now(UTC)
                headers = {
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                    "webhook-id": event_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": webhook.sign(event_id, now, body),
                }
                response = await client.post(url, content=body.encode(), headers=headers)
                statuses[response.status_code] += 1

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(in_flight))), timeout)
        elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"anchor: the receiver answered {dict(statuses)}")
    return elapsed


def run_anchor(args: argparse.Namespace, stage: Stage) -> Sample:
    """The same bodies through a plain asyncio httpx loop."""
    count = len(stage.backlog.bodies)
    meter = CpuMeter({"receiver": [stage.receiver.pid], "redis": [stage.redis_pid]})
    wait_quiet()
    meter.start()
    drain_s = asyncio.run(
        _post_all(stage.hook_url("anchor"), stage.backlog, args.in_flight, args.timeout)
    )
    used = meter.stop()
    received = verify(stage, "anchor")
    return Sample(
        side="anchor",
        rate=count / drain_s,
        drain_s=drain_s,
        spawn_s=float("nan"),
        cpu_ms=used["self"] / count * 1000,
        receiver_cpu_ms=used["receiver"] / count * 1000,
        redis_cpu_ms=used["redis"] / count * 1000,
        duplicates=received.count - len(received.ids),
        other_cpu_pct=used["other_pct"],
    )


def repetition(rep: int, args: argparse.Namespace) -> list[Sample]:
    """Both sides against one stage; Kiln first in even repetitions. Returns [kiln, anchor]."""
    runners = {"kiln": run_kiln, "anchor": run_anchor}
    samples = []
    with staged(args, args.deliveries, "kiln-bench-webhooks-") as stage:
        if rep == 0:
            sizes = [len(body) for _event_id, body in stage.backlog.bodies]
            print(f"  payloads: {min(sizes)}-{max(sizes)} bytes", flush=True)
        for side in SIDES if rep % 2 == 0 else reversed(SIDES):
            sample = runners[side](args, stage)
            print(table(HEADERS, [sample.row()]).splitlines()[-1], flush=True)
            samples.append(sample)
    return sorted(samples, key=lambda sample: sample.side != "kiln")


def summary(runs: list[list[Sample]]) -> str:
    """Medians over the repetitions, then Kiln's ratio to the anchor against the goals."""
    rows = []
    for index, side in enumerate(SIDES):
        samples = [run[index] for run in runs]
        values = (median([getattr(s, name) for s in samples]) for name in FIELDS)
        rows.append([side, *map(_shown, values)])
    ratios = [run[0].rate / run[1].rate for run in runs]
    cpu_ratios = [run[1].cpu_ms / run[0].cpu_ms for run in runs]
    kiln_rate = median([run[0].rate for run in runs])
    goal_rows = [
        ["Kiln / anchor deliveries/s", median(ratios), ">= 0.5", _verdict(median(ratios) >= 0.5),
         ", ".join(f"{value:.2f}" for value in ratios)],
        ["Kiln deliveries/s", kiln_rate, ">= 300", _verdict(kiln_rate >= 300),
         ", ".join(f"{run[0].rate:.0f}" for run in runs)],
        # Both senders are bound by one GIL, so CPU per delivery predicts the ratio on a quiet
        # machine, and other people's work skews it far less than it skews the rates.
        ["proxy: anchor / Kiln CPU per delivery", median(cpu_ratios), "(>= 0.5)",
         _verdict(median(cpu_ratios) >= 0.5), ", ".join(f"{value:.2f}" for value in cpu_ratios)],
    ]  # fmt: skip
    medians = table([f"median of {len(runs)}", *HEADERS[1:]], rows)
    goals = table(["goal", "median", "target", "holds", "per repetition"], goal_rows)
    return f"{medians}\n\n{goals}"


def summaries(runs: list[list[Sample]], markdown: str) -> list[dict[str, object]]:
    """The deliveries/s against the anchor, for `bench.run_all`."""
    kiln = median([run[0].rate for run in runs])
    anchor = median([run[1].rate for run in runs])
    ratio = median([run[0].rate / run[1].rate for run in runs])
    drain = {side: median([run[i].drain_s for run in runs]) for i, side in enumerate(SIDES)}
    return [
        bench_summary(
            name="webhooks",
            title="Webhook deliveries, one callbacks worker vs an httpx loop",
            unit="deliveries/s",
            kiln=kiln,
            anchor=anchor,
            ratio=ratio,
            goal=0.5,
            goal_text=">= 0.5 x the httpx loop and >= 300/s",
            met=ratio >= 0.5 and kiln >= 300,
            extra={"drain_s": drain},
            markdown=markdown,
        )
    ]


def _verdict(holds: bool) -> str:
    return "yes" if holds else "**no**"


# --- where the worker's time goes --------------------------------------------------------------

WATCHED = [  # (label, file path suffix or "~" for C functions, function name), in call order
    ("deliver: a whole batch", "workers/flows/deliver.py", "deliver"),
    ("crud.claim_due_deliveries (UPDATE … RETURNING, COMMIT)", "shared/crud.py",
     "claim_due_deliveries"),
    ("crud.signing_secrets (SELECT api_keys)", "shared/crud.py", "signing_secrets"),
    ("signing.signed_headers", "shared/webhooks/signing.py", "signed_headers"),
    ("WebhookSender.post (event loop thread)", "shared/webhooks/sender.py", "post"),
    ("  ssrf.vet_url", "shared/webhooks/ssrf.py", "vet_url"),
    ("  httpx AsyncClient.send", "httpx/_client.py", "send"),
    ("deliver._outcome (verdict, attempt row)", "workers/flows/deliver.py", "_outcome"),
    ("crud.record_outcomes (UPDATE, UPDATE and INSERT many, COMMIT)", "shared/crud.py",
     "record_outcomes"),
    ("sqlite3 Connection.commit (C)", "~", "<method 'commit' of 'sqlite3.Connection' objects>"),
    ("sqlite3 Cursor.execute (C)", "~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
]  # fmt: skip
_PACKAGE = re.compile(r"site-packages/([^/]+)|/(shared|workers|bench)/|/python3\.\d+/(\w+)")


def _where(filename: str, function: str = "") -> str:
    """The package a function belongs to (C functions: by what they are methods of)."""
    if filename == "~":
        owner = re.search(r"of '([\w.]+)", function)
        return f"{owner.group(1).split('.')[0] if owner else 'builtins'} (C)"
    if "site-packages/" in filename:  # before the stdlib pattern, which also matches it
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    found = _PACKAGE.search(filename)
    if found is None:
        return "other"
    _package, ours, stdlib = found.groups()
    return ours or f"stdlib {stdlib}"


_PATH_PREFIX = re.compile(rf"\S*site-packages/|{re.escape(str(ROOT))}/|\S*/python3\.\d+/")


def _short(text: str) -> str:
    """Source paths in `text` from their package on (`sqlalchemy/orm/session.py`)."""
    return _PATH_PREFIX.sub("", text)


def _drain_in_process(count: int) -> int:
    """Batches through `deliver` until `count` deliveries (or all that are due) went out."""
    from workers.flows.deliver import deliver

    done = 0
    while done < count and (sent := deliver("bench")):
        done += sent
    return done


async def _profile_loop_thread(profiler: cProfile.Profile, on: bool) -> None:
    """Switch `profiler` on or off in the thread the coroutine runs in (cProfile is per thread)."""
    if on:
        profiler.enable()
    else:
        profiler.disable()


def profile_in_process(stage: Stage, count: int) -> str:
    """`deliver` in this process, batch after batch: timed, then under cProfile."""
    from workers.flows.deliver import get_sender

    get_sender.cache_clear()
    _drain_in_process(PROFILE_WARMUP)
    wait_quiet()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    timed = _drain_in_process(count)
    wall_ms = (time.perf_counter() - wall0) / timed * 1000
    cpu_ms = (time.process_time() - cpu0) / timed * 1000
    profiler, loop_profiler = cProfile.Profile(), cProfile.Profile()
    sender = get_sender()
    sender.submit(_profile_loop_thread(loop_profiler, True)).result()
    profiler.enable()
    count = _drain_in_process(count)
    profiler.disable()
    sender.submit(_profile_loop_thread(loop_profiler, False)).result()
    sender.close()
    get_sender.cache_clear()
    stats = pstats.Stats(profiler).add(loop_profiler)
    # pstats keeps its table in an attribute typeshed does not declare:
    # (file, line, function) → (primitive calls, calls, own time, cumulative time, callers).
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = getattr(stats, "stats")  # noqa: B009
    total = sum(entry[2] for entry in entries.values())
    watched_rows = []
    for label, suffix, function in WATCHED:
        cumulative = sum(entry[3] for (file, _line, name), entry in entries.items()
                         if name == function and file.endswith(suffix))  # fmt: skip
        watched_rows.append([label, cumulative / count * 1000, f"{100 * cumulative / total:.0f}%"])
    by_package: defaultdict[str, float] = defaultdict(float)
    for (file, _line, name), entry in entries.items():
        by_package[_where(file, name)] += entry[2]
    top = io.StringIO()
    pstats.Stats(profiler, stream=top).add(loop_profiler).sort_stats("tottime").print_stats(20)
    top_lines = [line for line in top.getvalue().splitlines() if line.strip()][-21:]
    return "\n\n".join([
        f"In-process `deliver`, batch after batch, {timed} deliveries: {wall_ms:.2f} ms wall and "
        f"{cpu_ms:.2f} ms CPU per delivery without a profiler.",
        "Under cProfile (its overhead inflates Python-heavy parts):",
        table(["step", "cumulative ms/delivery", "share"], watched_rows),
        _share_table("own time by package", by_package, total, count, 12),
        "```\n" + "\n".join(_short(line) for line in top_lines) + "\n```",
    ])  # fmt: skip


def _share_table(
    title: str, seconds: Mapping[str, float], total: float, count: int, top: int
) -> str:
    """The `top` biggest of `seconds` (CPU seconds over `count` deliveries), per delivery."""
    biggest = sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:top]
    rows = [[name, spent / count * 1000, f"{100 * spent / total:.0f}%"] for name, spent in biggest]
    return table([title, "ms/delivery", "share"], rows)


# The worker runs its deliveries on 8 threads that share one GIL, which cProfile (one thread)
# cannot see; this sampler charges each thread's CPU time to the stack it is found in.

SAMPLE_EVERY_S = 0.002
STACK_DEPTH = 100
TRUNK_SHARE = 0.97  # a frame in this share of a thread's samples is part of its trunk
SAMPLES_ENV = "BENCH_WEBHOOK_SAMPLES"  # where the sampled worker writes its counts, as JSON


def _thread_cpu_clock(native_id: int) -> int:
    """Linux's CPU-time clock id of one thread, from its kernel id: no pthread handle needed,
    so a thread that has just exited gives EINVAL rather than undefined behaviour."""
    return ((~native_id) << 3) | 6  # CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED


class CpuSampler:
    """Every few milliseconds, charges each thread's CPU time since the previous look to the
    stack it is in now; counts only while armed (after the worker's boot)."""

    def __init__(self) -> None:
        self.inclusive: defaultdict[str, float] = defaultdict(float)  # once in a stack
        self.own: defaultdict[str, float] = defaultdict(float)  # the innermost Python frame
        self.threads: defaultdict[str, float] = defaultdict(float)  # name with digits as N
        self.armed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def as_json(self) -> str:
        fields = ("inclusive", "own", "threads")
        return json.dumps({name: getattr(self, name) for name in fields})

    def _run(self) -> None:
        seen: dict[int, float] = {}
        while not self._stop.wait(SAMPLE_EVERY_S):
            frames = sys._current_frames()
            for thread in threading.enumerate():
                frame = frames.get(thread.ident or 0)
                if thread is self._thread or thread.native_id is None or frame is None:
                    continue
                try:
                    now = time.clock_gettime(_thread_cpu_clock(thread.native_id))
                except OSError:
                    continue
                spent = now - seen.get(thread.native_id, now)
                seen[thread.native_id] = now
                if spent > 0 and self.armed.is_set():
                    self._charge(thread.name, frame, spent)

    def _charge(self, thread_name: str, frame: FrameType, spent: float) -> None:
        kind = re.sub(r"\d+", "N", thread_name)
        self.threads[kind] += spent
        names: list[str] = []
        current: FrameType | None = frame
        while current is not None and len(names) < STACK_DEPTH:
            names.append(f"{current.f_code.co_filename}:{current.f_code.co_name}")
            current = current.f_back
        self.own[names[0]] += spent
        for name in set(names):
            self.inclusive[f"{kind}|{name}"] += spent


def sampled_worker() -> None:
    """`kiln worker` with the arguments given and a CpuSampler armed at its first task; the
    counts go to the file named by $BENCH_WEBHOOK_SAMPLES when it exits."""
    from celery import signals

    from shared.cli.main import app

    sampler = CpuSampler()
    out = Path(os.environ[SAMPLES_ENV])

    def on_task_done(**_: Any) -> None:
        sampler.armed.set()  # the first task's own time is left out with the boot

    def dump() -> None:
        sampler.stop()
        out.write_text(sampler.as_json())

    signals.task_postrun.connect(on_task_done, weak=False)
    atexit.register(dump)
    sampler.start()
    sys.argv = ["kiln", *sys.argv[1:]]  # python -c "..." worker --queues ...
    app()


def profile_worker(stage: Stage, ids: list[str], args: argparse.Namespace) -> str:
    """Publish `ids` and drain them with one sampled callbacks worker."""
    samples_path = stage.data_dir / "worker-samples.json"
    code = "from bench.webhooks import sampled_worker; sampled_worker()"
    argv = [PYTHON, "-c", code, *worker_argv(args.threads)[len(KILN) :]]
    publish(ids)
    wait_quiet()
    drained = drain(stage, argv, args.timeout, env={SAMPLES_ENV: str(samples_path)})
    data = json.loads(samples_path.read_text())
    tasks = drained.measured  # deliveries: each task sends a batch of them
    threads: dict[str, float] = data["threads"]
    by_package: defaultdict[str, float] = defaultdict(float)
    for name, spent in data["own"].items():
        by_package[_where(name.rsplit(":", 1)[0])] += spent
    total = sum(threads.values())
    parts = [
        f"One callbacks worker, sampled every {SAMPLE_EVERY_S * 1000:.0f} ms, {tasks} deliveries:"
        f" {drained.used['worker'] / drained.measured * 1000:.2f} ms of process CPU per delivery"
        f" (/proc, the sampler's own included), {total / tasks * 1000:.2f} ms of it charged to"
        " the worker's Python threads. Thread totals are exact; within a thread, the CPU spent"
        " since the last look goes to the frame the thread is in now, so frames that wait"
        " (socket reads, queue gets) collect some of what ran just before them.",
        _share_table("worker thread", threads, total, tasks, 8),
        _share_table("own time by package (innermost Python frame)", by_package, total, tasks, 12),
    ]
    for kind, spent in sorted(threads.items(), key=lambda item: item[1], reverse=True)[:2]:
        # Below the trunk: frames every sample of the thread passes through say nothing.
        below = {_short(name.split("|", 1)[1]): value
                 for name, value in data["inclusive"].items()
                 if name.startswith(f"{kind}|") and value < TRUNK_SHARE * spent}  # fmt: skip
        parts.append(_share_table(f"{kind}: inclusive, file:function", below, total, tasks, 25))
    return "\n\n".join(parts)


def profile_worker_path(args: argparse.Namespace) -> str:
    """The worker path: `deliver` in this process (cProfile), then a sampled worker process."""
    count = args.profile
    rows = PROFILE_WARMUP + 2 * count + args.profile_worker
    with staged(args, rows, "kiln-bench-webhooks-profile-") as stage:
        parts = [profile_in_process(stage, count)]
        if args.profile_worker:
            worker_ids = stage.backlog.ids[-args.profile_worker :]
            parts.append(profile_worker(stage, worker_ids, args))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=5000, help="backlog per repetition")
    parser.add_argument("--in-flight", type=int, default=CALLBACK_THREADS,
                        help="the anchor's concurrent requests")  # fmt: skip
    parser.add_argument("--threads", type=int, default=CALLBACK_THREADS,
                        help="the callbacks worker's threads (kiln up: 8)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300.0, help="limit per side, seconds")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then profile N in-process deliveries (0: skip)")  # fmt: skip
    parser.add_argument("--profile-worker", type=int, default=0, metavar="M",
                        help="with --profile: M more through a sampled worker")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    parser.add_argument("--json", type=Path, help="also write a summary for bench.run_all here")
    args = parser.parse_args()
    print(machine(), "\n")
    print(f"{args.deliveries} deliveries per side and repetition; Kiln: one callbacks worker, "
          f"{args.threads} threads; anchor: {args.in_flight} in flight\n")  # fmt: skip
    print(table(HEADERS, []), flush=True)
    runs = [repetition(rep, args) for rep in range(args.reps)]
    print()
    markdown = summary(runs)
    print(markdown)
    write_summaries(args.json, summaries(runs, markdown))
    if args.profile > 0:
        print()
        print(profile_worker_path(args))


if __name__ == "__main__":
    main()
