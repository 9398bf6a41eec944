"""Where Kiln's time goes, in one process with no HTTP server: what each call on the submit path
and on the worker path costs, and cProfile listings of both.

    uv run python -m bench.hotpaths [--calls 500] [--requests 2000] [--top 25]

It runs against a fresh embedded Redis and a throwaway SQLite file, one call at a time (no lock
contention), so the numbers are each step's own cost. The submit path is driven through the ASGI
app directly; its cProfile listing covers every thread (sync routes and dependencies run in
AnyIO's worker threads).
"""

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sysconfig
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import uvloop

from bench.common import ROOT, fresh_redis, kiln_env, machine, prepare_kiln, table, wait_quiet

KILN_CODE = r"/(api|shared|workers)/"  # what counts as Kiln's own code in a listing
SITE_PACKAGES = sysconfig.get_paths()["purelib"] + "/"  # shortened away in listings
PROMPT = "Say hello to the benchmark"
BODY = json.dumps({"kind": "generate", "input": {"prompt": PROMPT}}).encode()
STEP_HEADERS = ["step", "wall µs", "CPU µs (this process)"]
CONCURRENCY = 8  # in-flight ASGI requests while profiling


Timing = tuple[float, float]  # median wall µs, median CPU µs (all of this process's threads)
Step = tuple[str, Timing | str]  # a step's name and its timing, or why it failed


def _medians(walls: list[float], cpus: list[float]) -> Timing:
    return statistics.median(walls) * 1e6, statistics.median(cpus) * 1e6


def per_call(call: Callable[[], object], count: int) -> Timing:
    """Median wall and CPU microseconds of `call`, after one unmeasured call."""
    call()
    walls, cpus = [], []
    for _ in range(count):
        cpu, wall = time.process_time(), time.perf_counter()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return _medians(walls, cpus)


async def async_per_call(call: Callable[[], Awaitable[object]], count: int) -> Timing:
    await call()
    walls, cpus = [], []
    for _ in range(count):
        cpu, wall = time.process_time(), time.perf_counter()
        await call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return _medians(walls, cpus)


def asgi_post(app: Any, path: str, body: bytes, key: str) -> Callable[[], Awaitable[int]]:
    """A coroutine factory sending one POST to `app` over ASGI; each returns the status."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", f"Bearer {key}".encode()),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip

    async def post() -> int:
        status, delivered = 0, False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app({**scope, "state": {}}, receive, send)
        if status >= 300:
            raise RuntimeError(f"POST {path} answered {status}")
        return status

    return post


class AllThreads:
    """cProfile in this thread and in every thread started while it is installed, counting each
    thread's CPU time: wall time would charge a function for the time its thread waited for the
    GIL or for I/O."""

    def __init__(self) -> None:
        self.profiles = [self._new()]

    @staticmethod
    def _new() -> cProfile.Profile:
        return cProfile.Profile(time.thread_time_ns, 1e-9)

    def install(self) -> None:
        def start(*_: object) -> None:
            profile = self._new()
            self.profiles.append(profile)
            profile.enable()  # replaces this hook in the new thread

        threading.setprofile(start)
        self.profiles[0].enable()

    def clear(self) -> None:
        for profile in self.profiles:
            profile.clear()

    def stop(self) -> tuple[pstats.Stats, pstats.Stats]:
        """Everything recorded so far, and this thread's part of it. The other threads'
        profilers are read, not disabled: disabling one from this thread would close its pending
        calls on this thread's clock."""
        self.profiles[0].disable()
        threading.setprofile(None)
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            stats.add(cast(cProfile.Profile, _Snapshot(profile)))  # pstats only calls create_stats
        return stats, pstats.Stats(self.profiles[0])


class _Snapshot:
    """A profiler's finished calls, for pstats, leaving the profiler running."""

    def __init__(self, profile: cProfile.Profile) -> None:
        self.profile = profile
        self.stats: dict[Any, Any] = {}

    def create_stats(self) -> None:
        self.profile.snapshot_stats()
        self.stats = self.profile.stats


def listing(stats: pstats.Stats, top: int) -> str:
    """The top functions by own and by cumulative time, then Kiln's own by cumulative time."""
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    out.write("By own time (all code):\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write("\nBy cumulative time (all code):\n")
    stats.sort_stats("cumulative").print_stats(top)
    out.write("\nKiln's functions by cumulative time:\n")
    stats.sort_stats("cumulative").print_stats(KILN_CODE, top)
    text = out.getvalue().replace(str(ROOT) + "/", "").replace(SITE_PACKAGES, "")
    return "\n".join(line for line in text.splitlines() if line.strip())


# --- the submit path ---------------------------------------------------------------------------


def measure_steps(steps: list[tuple[str, Callable[[], object]]], count: int) -> list[Step]:
    """Time each step; a step that fails (the code it calls changed) is reported, not fatal."""
    measured: list[Step] = []
    for name, call in steps:
        try:
            measured.append((name, per_call(call, count)))
        except Exception as exc:
            measured.append((name, f"failed: {type(exc).__name__}: {exc}"[:80]))
    return measured


def submit_parts(count: int) -> list[Step]:
    """Each step of `POST /v1/jobs`, called on its own, and Celery's `send_task` for scale."""
    from api import service
    from bench import anchors
    from shared import crud, dispatch
    from shared.broker import get_redis
    from shared.config import get_settings
    from shared.db import open_session
    from shared.models import Job
    from shared.schemas import JobCreate, JobPublic

    settings = get_settings()
    key = os.environ["KILN_ADMIN_API_KEY"]
    body = JobCreate.model_validate_json(BODY)
    with open_session() as session:
        admin = crud.get_active_key(session=session, key=key)
    assert admin is not None
    redis = get_redis()

    def new_job() -> Job:
        return Job(kind="generate", input=service._validated_input(body), owner_id=admin.id)

    def authenticate() -> None:
        with open_session() as session:
            crud.get_active_key(session=session, key=key)

    def insert() -> None:
        with open_session() as session:
            crud.insert_job(session=session, job=new_job())

    def enqueue() -> None:
        dispatch.enqueue(new_job(), announce=True)

    def send_task(sent_event: bool) -> None:
        job_id = new_job().id
        anchors.celery.conf.task_send_sent_event = sent_event
        anchors.celery.send_task(anchors.TASK_NOOP, args=[job_id], task_id=job_id, retry=False)

    def submit() -> None:
        with open_session() as session:
            service.submit_job(
                session=session, settings=settings, api_key=admin, body=body,
                idempotency_key=None, request_id=None,
            )  # fmt: skip

    job = new_job()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("parse body: JobCreate.model_validate_json", lambda: JobCreate.model_validate_json(BODY)),
        ("validate input + build Job()", new_job),
        ("authenticate: crud.get_active_key (own session)", authenticate),
        ("crud.insert_job: INSERT + COMMIT (own session, incl. Job())", insert),
        ("dispatch.enqueue(announce=True), incl. Job()", enqueue),
        ("Redis PING (one round trip)", redis.ping),
        ("JobPublic.from_job + model_dump_json", lambda: JobPublic.from_job(job, "http://h/").model_dump_json()),
        ("service.submit_job, whole (no auth, no HTTP)", submit),
        ("for scale: Celery send_task, task-sent event on", lambda: send_task(True)),
        ("for scale: Celery send_task, task-sent event off", lambda: send_task(False)),
    ]  # fmt: skip
    return measure_steps(steps, count)


async def _concurrently(post: Callable[[], Awaitable[int]], total: int) -> None:
    remaining = [total]

    async def loop() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await post()

    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))


@asynccontextmanager
async def _kiln_post() -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """Kiln's submit with the app's lifespan running, as under a server (so the process's
    caches listen for changes and are trusted)."""
    from api.deps import API_KEYS
    from api.main import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        while not API_KEYS.trusted:
            await asyncio.sleep(0.01)
        yield asgi_post(app, "/v1/jobs", BODY, os.environ["KILN_ADMIN_API_KEY"])


async def asgi_parts(count: int) -> tuple[list[Step], int]:
    """The whole request through each app's ASGI stack, the cost of one thread hop, and how
    many hops Kiln's submit makes."""
    import anyio.to_thread

    from bench import anchors

    key = os.environ["KILN_ADMIN_API_KEY"]
    anchor = asgi_post(anchors.create_app(), "/v1/jobs", BODY, key)
    async with _kiln_post() as kiln:
        parts: list[Step] = [
            ("AnyIO thread hop (run_sync of a no-op)",
             await async_per_call(lambda: anyio.to_thread.run_sync(lambda: None), count)),
            ("Kiln POST /v1/jobs through its ASGI app", await async_per_call(kiln, count)),
            ("anchor POST /v1/jobs through its ASGI app", await async_per_call(anchor, count)),
        ]  # fmt: skip

        real_run_sync, hops = anyio.to_thread.run_sync, 0

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal hops
            hops += 1
            return await real_run_sync(*args, **kwargs)

        anyio.to_thread.run_sync = counting  # type: ignore[assignment]
        try:
            await kiln()
        finally:
            anyio.to_thread.run_sync = real_run_sync
    return parts, hops


async def profile_submits(requests: int) -> tuple[pstats.Stats, pstats.Stats]:
    """cProfile of `requests` Kiln submits. Run it on a new event loop: AnyIO keeps a thread
    pool per loop, and only threads started after `install` are profiled."""
    async with _kiln_post() as kiln:
        profiler = AllThreads()
        profiler.install()
        await _concurrently(kiln, 100)
        profiler.clear()
        await _concurrently(kiln, requests)
        return profiler.stop()


# --- the worker path ---------------------------------------------------------------------------


def worker_parts(count: int, jobs: int) -> tuple[list[Step], pstats.Stats]:
    """Each step of running one `generate` job, then a profile of `jobs` whole runs."""
    from shared import crud, events
    from shared.broker import get_redis
    from shared.config import get_settings
    from shared.db import open_session
    from shared.llm import GenerateRequest, get_provider
    from shared.models import Job
    from shared.states import JobStatus
    from workers.flows import generate
    from workers.lease import LeaseKeeper
    from workers.runner import JobContext, _claim, _finish, run_job
    from workers.tokens import TokenSender

    def queued(n: int) -> list[str]:
        ids = []
        with open_session() as session:
            for _ in range(n):
                job = Job(kind="generate", input={"prompt": PROMPT}, owner_id="admin")
                ids.append(crud.insert_job(session=session, job=job).id)
        return ids

    redis = get_redis()
    to_claim: list[str] = queued(count + 1)
    claimed: list[Job] = []
    request = GenerateRequest(prompt=PROMPT, model="template")

    def claim() -> None:
        job = _claim(to_claim.pop(), worker="hotpaths", lease_seconds=30.0)
        assert job is not None
        claimed.append(job)

    def finish() -> None:
        job = claimed.pop()
        lease = LeaseKeeper(job.id, job.attempt, 30.0, job.lease_expires_at)  # never entered
        context = JobContext(job, get_settings(), lease, TokenSender(job.id), "hotpaths")
        _finish(context, JobStatus.succeeded, result={"response": "ok"})

    def lease() -> None:
        with LeaseKeeper("hotpaths", 1, 30.0, None):
            pass

    def provider() -> None:
        get_provider().generate(request, on_token=lambda _: None, should_stop=lambda: False)

    to_run = queued(count + 1)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("runner._claim: the queued → running transition", claim),
        ("runner._finish: the running → succeeded transition", finish),
        ("LeaseKeeper enter + exit (one timer thread per process)", lease),
        ("one token event: XADD", lambda: events.append_tokens(redis, "hotpaths", ["word"])),
        ("template provider.generate, tokens dropped", provider),
        ("run_job, whole (8 tokens)", lambda: run_job(to_run.pop(), generate.run, worker="hot")),
    ]  # fmt: skip
    timed = measure_steps(steps, count)

    to_profile = queued(jobs)
    profiler = AllThreads()
    profiler.install()
    for job_id in to_profile:
        run_job(job_id, generate.run, worker="hotpaths")
    return timed, profiler.stop()[0]


def redis_commands(url: str, action: Callable[[], object]) -> list[str]:
    """The Redis commands `action` sends, as MONITOR shows them (shortened)."""
    import redis

    seen: list[str] = []
    end = f"bench-monitor-end-{os.getpid()}"

    def watch() -> None:
        with redis.Redis.from_url(url).monitor() as monitor:  # type: ignore[no-untyped-call]
            for command in monitor.listen():
                text = str(command["command"])
                if end in text:
                    return
                seen.append(text)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)  # until MONITOR is on
    action()
    redis.Redis.from_url(url).echo(end)
    watcher.join(timeout=10)
    return [text[:90] for text in seen if not text.startswith(("HELLO", "CLIENT"))]


def one_job(url: str) -> tuple[list[str], list[str]]:
    """The Redis commands of one submit (service.submit_job) and of one run_job."""
    from api import service
    from shared import crud
    from shared.config import get_settings
    from shared.db import open_session
    from shared.models import Job
    from shared.schemas import JobCreate
    from workers.flows import generate
    from workers.runner import run_job

    body = JobCreate.model_validate_json(BODY)
    jobs: list[Job] = []

    def submit() -> None:
        with open_session() as session:
            admin = crud.get_active_key(session=session, key=os.environ["KILN_ADMIN_API_KEY"])
            assert admin is not None
            job, _ = service.submit_job(
                session=session, settings=get_settings(), api_key=admin, body=body,
                idempotency_key=None, request_id=None,
            )  # fmt: skip
            jobs.append(job)

    submitted = redis_commands(url, submit)
    ran = redis_commands(url, lambda: run_job(jobs[0].id, generate.run, worker="hotpaths"))
    return submitted, ran


def _rows(steps: list[Step]) -> list[list[object]]:
    return [
        [name, *timing] if isinstance(timing, tuple) else [name, timing, ""]
        for name, timing in steps
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per timed step")
    parser.add_argument("--requests", type=int, default=2000, help="submits profiled")
    parser.add_argument("--jobs", type=int, default=500, help="job runs profiled")
    parser.add_argument("--top", type=int, default=25, help="lines per profile listing")
    parser.add_argument("--dump", type=Path, help="also save the profiles (.prof) in this folder")
    args = parser.parse_args()
    print(machine(), "\n")
    wait_quiet()
    data_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-hotpaths-"))
    try:
        with fresh_redis(data_dir) as server:
            env = kiln_env(data_dir, server.url)
            prepare_kiln(env)
            os.environ.update(env, BENCH_REDIS_URL=server.url)
            submit = submit_parts(args.calls)
            asgi, hops = uvloop.run(asgi_parts(args.calls))
            submit_stats, loop_stats = uvloop.run(profile_submits(args.requests))
            worker, worker_stats = worker_parts(args.calls, args.jobs)
            submit_commands, job_commands = one_job(server.url)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        submit_stats.dump_stats(args.dump / "submit.prof")
        loop_stats.dump_stats(args.dump / "submit-event-loop.prof")
        worker_stats.dump_stats(args.dump / "run_job.prof")
    print(f"## Submit path (median of {args.calls} calls each)\n")
    print(table(STEP_HEADERS, _rows([*submit, *asgi])))
    print(f"\nThread hops (anyio.to_thread.run_sync) per Kiln submit: {hops}\n")
    print(f"## Worker path (median of {args.calls} calls each)\n")
    print(table(STEP_HEADERS, _rows(worker)))
    print("\n## Redis commands (MONITOR; XADD + EXPIRE go in one pipelined round trip)\n")
    print("One submit (service.submit_job):\n```\n" + "\n".join(submit_commands) + "\n```")
    print("One run_job (without Celery's own commands):\n```\n" + "\n".join(job_commands))
    print("```")
    print(f"\n## cProfile: {args.requests} Kiln submits via ASGI, {CONCURRENCY} in flight\n")
    print("```\n" + listing(submit_stats, args.top) + "\n```")
    print(f"\n## cProfile: the event-loop thread's part of those {args.requests} submits\n")
    print("```\n" + listing(loop_stats, args.top) + "\n```")
    print(f"\n## cProfile: {args.jobs} run_job calls, one at a time\n")
    print("```\n" + listing(worker_stats, args.top) + "\n```")


if __name__ == "__main__":
    main()
