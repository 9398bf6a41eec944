"""Jobs completed per second and single-job round trip: Kiln (API + gpu worker, template
provider) against raw Celery no-op tasks (bench/anchors.py), in the same run.

    uv run python -m bench.e2e [--reps 3] [--jobs 2000] [--clients 16] [--round-trips 100]
                               [--task-events]

Both sides use a 2-process prefork worker with Kiln's worker options (late acks, prefetch 1,
`-O fair`, no mingle or gossip). Neither sends task events unless a monitor asks (Celery's
default and Kiln's); `--task-events` turns them on for both, as while Flower watches.
`kiln worker --queues gpu` forces concurrency 1 (one inference per GPU), so Kiln's worker is
started here as `celery -A workers.app worker -Q gpu -c 2 ...`.

For each side, in order:
- drain: `--jobs` jobs are queued with no worker running, then the worker starts; the rate is
  taken between the first and the last finish time (the worker path alone).
- e2e: with the worker warm, `--jobs` more are submitted (Kiln: `POST /v1/jobs` from
  `--clients` connections; Celery: `send_task` in a loop); the rate is taken from the first
  submit to the last finish.
- round trip: `--round-trips` jobs one after the other, each from submit until the client sees
  the result (Kiln: the terminal event on the job's SSE stream; Celery: BLPOP on a list the
  task pushes to).
"""

import argparse
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import uvloop

from bench import anchors
from bench.common import (
    CpuMeter,
    bench_summary,
    both_sides,
    celery_worker_argv,
    kiln_env,
    machine,
    median,
    percentile,
    prepare_kiln,
    running,
    server_pids,
    table,
    tree,
    uvicorn_argv,
    wait_key,
    wait_until,
    wait_uvicorn,
    write_summaries,
)
from bench.loadgen import LoadClient, build_request
from shared.embedded_redis import EmbeddedRedis, free_port

PROMPT = "Say hello to the benchmark"  # the template provider streams 8 tokens for it
BODY = json.dumps({"kind": "generate", "input": {"prompt": PROMPT}}).encode()
API_WORKERS = 2
WORKER_CONCURRENCY = 2
ROUND_TRIP_WARMUP = 5
TERMINAL = ("succeeded", "failed", "canceled")
E2E_GOAL = 0.5  # Kiln's e2e jobs/s at least this share of raw Celery's
ROUND_TRIP_GOAL = 2.0  # Kiln's round trip p50 at most this multiple of raw Celery's


@dataclass
class Sample:
    """One side in one repetition."""

    side: str
    drain_rate: float  # jobs/s, worker path alone
    e2e_rate: float  # jobs/s, first submit to last finish
    rt_p50_ms: float
    rt_p95_ms: float
    rt_p99_ms: float  # for bench.run_all's latency plot; not in the printed tables
    worker_cpu_ms: float  # worker processes' CPU per job, during e2e
    api_cpu_ms: float  # the API's (Kiln) or the producer's (Celery) CPU per job, during e2e
    redis_cpu_ms: float
    other_cpu_pct: float  # CPU used by other programs during e2e, in percent of the machine
    segments: list[float] = field(default_factory=list)  # Kiln: round trip parts (SEGMENTS), ms

    def row(self) -> list[object]:
        return [self.side, *(getattr(self, name) for name in FIELDS)]


FIELDS = ["drain_rate", "e2e_rate", "rt_p50_ms", "rt_p95_ms", "worker_cpu_ms", "api_cpu_ms"]
FIELDS += ["redis_cpu_ms", "other_cpu_pct"]
HEADERS = ["side", "drain jobs/s", "e2e jobs/s", "round trip p50 ms", "round trip p95 ms"]
HEADERS += ["worker CPU ms/job", "API/producer CPU ms/job", "Redis CPU ms/job"]
HEADERS += ["other programs' CPU %"]


def _rate(count: int, start: float, finishes: list[float]) -> float:
    return count / (max(finishes) - start)


def _drain_rate(finishes: list[float]) -> float:
    return (len(finishes) - 1) / (max(finishes) - min(finishes))


# --- Kiln --------------------------------------------------------------------------------------


class KilnDB:
    """Reads job outcomes straight from the SQLite file, read-only."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def finished(self) -> int:
        query = "SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled')"
        return int(self.connection.execute(query).fetchone()[0])

    def finish_times(self, ids: list[str]) -> list[float]:
        """Epoch finish times of `ids`; fails if any did not succeed."""
        rows = self.connection.execute("SELECT id, status, finished_at FROM jobs").fetchall()
        by_id = {row[0]: row for row in rows}
        failed = [job_id for job_id in ids if by_id[job_id][1] != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")
        return [_epoch(by_id[job_id][2]) for job_id in ids]

    def moments(self, ids: list[str]) -> dict[str, tuple[float, float, float]]:
        """Epoch created, started and finished times of `ids`."""
        query = "SELECT id, created_at, started_at, finished_at FROM jobs"
        rows = {row[0]: row for row in self.connection.execute(query)}
        return {
            job_id: (_epoch(rows[job_id][1]), _epoch(rows[job_id][2]), _epoch(rows[job_id][3]))
            for job_id in ids
        }

    def wait(self, total: int, timeout: float) -> None:
        wait_until(f"{total} finished jobs", lambda: self.finished() >= total, timeout)


def _epoch(stored: str) -> float:
    return datetime.fromisoformat(stored).replace(tzinfo=UTC).timestamp()


async def _submit(port: int, key: str, count: int, clients: int, timeout: float) -> list[str]:
    """`count` jobs through the API; returns their ids in no particular order."""
    request = build_request("127.0.0.1", port, "/v1/jobs", BODY, {"Authorization": f"Bearer {key}"})
    async with LoadClient("127.0.0.1", port, request, clients) as client:
        phase = await client.run(count, timeout=timeout, keep_bodies=True)
    if phase.errors:
        raise RuntimeError(f"submits failed: {dict(phase.statuses)}")
    return [json.loads(body)["id"] for body in phase.bodies]


@dataclass
class Trip:
    """Client-side moments (epoch seconds) of one Kiln round trip."""

    job_id: str
    sent: float
    answered: float  # the POST's answer arrived
    seen: float  # the terminal event arrived


def kiln_round_trip(client: httpx.Client, trips: list[Trip]) -> float:
    """Seconds from submit until the terminal event arrives on the job's SSE stream."""
    sent, started = time.time(), time.perf_counter()
    answer = client.post("/v1/jobs", content=BODY, headers={"Content-Type": "application/json"})
    job_id, answered = answer.raise_for_status().json()["id"], time.time()
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("status") in TERMINAL:
                elapsed = time.perf_counter() - started
                trips.append(Trip(job_id, sent, answered, time.time()))
                return elapsed
    raise RuntimeError(f"the event stream of job {job_id} ended with no terminal event")


SEGMENTS = ["POST answered", "created → claimed", "claimed → finished", "finished → seen"]


def trip_segments(db: "KilnDB", trips: list[Trip]) -> list[float]:
    """Median milliseconds of each part of a round trip, from the client's clock and the job
    rows' timestamps (one machine, one clock)."""
    rows = db.moments([trip.job_id for trip in trips])
    parts: list[list[float]] = [[], [], [], []]
    for trip in trips:
        created, started, finished = rows[trip.job_id]
        parts[0].append(trip.answered - trip.sent)
        parts[1].append(started - created)
        parts[2].append(finished - started)
        parts[3].append(trip.seen - finished)
    return [median(values) * 1000 for values in parts]


def run_kiln(args: argparse.Namespace, server: EmbeddedRedis, data_dir: Path) -> Sample:
    env = kiln_env(data_dir, server.url)
    if args.task_events:
        env["KILN_TASK_EVENTS"] = "true"
    prepare_kiln(env)
    db = KilnDB(data_dir / "kiln.db")
    client = redis.Redis.from_url(server.url)
    port, key, logs = free_port(), env["KILN_ADMIN_API_KEY"], data_dir / "logs"
    api_argv = uvicorn_argv(args.kiln_app, port, API_WORKERS)
    worker_argv = celery_worker_argv(args.kiln_worker, "gpu", WORKER_CONCURRENCY, "gpu@bench")
    with running("kiln-api", api_argv, env=env, log_dir=logs) as api:
        wait_uvicorn(api, f"http://127.0.0.1:{port}/healthz", API_WORKERS)

        def submit(count: int) -> list[str]:
            return uvloop.run(_submit(port, key, count, args.clients, args.timeout))

        drained = submit(args.jobs)
        with running("kiln-worker", worker_argv, env=env, log_dir=logs) as worker:
            db.wait(args.jobs, args.timeout)
            drain_rate = _drain_rate(db.finish_times(drained))
            wait_key(client, "kiln:worker:gpu@bench", worker)
            groups = {"front": server_pids(api.pid), "worker": tree(worker.pid)}
            meter = CpuMeter({**groups, "redis": [_pid(server)]})
            meter.start()
            first_submit = time.time()
            ids = submit(args.jobs)
            db.wait(2 * args.jobs, args.timeout)
            used = meter.stop()
            e2e_rate = _rate(args.jobs, first_submit, db.finish_times(ids))
            headers = {"Authorization": f"Bearer {key}"}
            marks: list[Trip] = []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
                trips = _round_trips(lambda: kiln_round_trip(http, marks), args.round_trips)
    client.close()
    sample = _sample("kiln", drain_rate, e2e_rate, trips, used, args.jobs)
    sample.segments = trip_segments(db, marks[-args.round_trips :])
    db.connection.close()
    return sample


# --- raw Celery --------------------------------------------------------------------------------


def celery_round_trip(app: Any, client: "redis.Redis") -> float:
    """Seconds from `send_task` until BLPOP returns the id the no-op task pushed."""
    job_id = uuid.uuid4().hex
    reply_to = f"bench:reply:{job_id}"
    started = time.perf_counter()
    app.send_task(anchors.TASK_NOOP, args=[job_id, reply_to], task_id=job_id, retry=False)
    if client.blpop([reply_to], timeout=10) is None:
        raise RuntimeError(f"no reply from task {job_id}")
    return time.perf_counter() - started


def run_anchor(args: argparse.Namespace, server: EmbeddedRedis, data_dir: Path) -> Sample:
    app = anchors.make_celery(server.url)
    client = redis.Redis.from_url(server.url)
    env, logs = {"BENCH_REDIS_URL": server.url}, data_dir / "logs"
    worker_argv = celery_worker_argv(
        "bench.anchors:celery", anchors.QUEUE, WORKER_CONCURRENCY, "anchor@bench"
    )
    if args.task_events:
        worker_argv.append("--task-events")

    def publish(count: int) -> None:
        for _ in range(count):
            job_id = uuid.uuid4().hex
            app.send_task(anchors.TASK_NOOP, args=[job_id], task_id=job_id, retry=False)

    def finish_times(count: int) -> list[float]:
        wait_until(
            f"{count} finished tasks",
            lambda: int(client.llen(anchors.DONE_LIST)) >= count,
            args.timeout,
        )
        return [float(raw) for raw in client.lrange(anchors.DONE_LIST, 0, count - 1)]

    publish(args.jobs)
    with running("anchor-worker", worker_argv, env=env, log_dir=logs) as worker:
        drain_rate = _drain_rate(finish_times(args.jobs))
        wait_key(client, anchors.READY_PREFIX + "anchor@bench", worker)
        client.delete(anchors.DONE_LIST)
        meter = CpuMeter({"worker": tree(worker.pid), "redis": [_pid(server)]})
        meter.start()
        first_submit = time.time()
        publish(args.jobs)  # from this process: its CPU is the producer's
        finishes = finish_times(args.jobs)
        used = meter.stop()
        used["front"] = used["self"]
        e2e_rate = _rate(args.jobs, first_submit, finishes)
        trips = _round_trips(lambda: celery_round_trip(app, client), args.round_trips)
    app.close()
    client.close()
    return _sample("celery", drain_rate, e2e_rate, trips, used, args.jobs)


# --- both --------------------------------------------------------------------------------------


def _pid(server: EmbeddedRedis) -> int:
    assert server.process is not None
    return server.process.pid


def _round_trips(trip: Callable[[], float], count: int) -> list[float]:
    for _ in range(ROUND_TRIP_WARMUP):
        trip()
    return [trip() for _ in range(count)]


def _sample(side: str, drain_rate: float, e2e_rate: float, trips: list[float],
            used: dict[str, float], jobs: int) -> Sample:  # fmt: skip
    """`used`: CPU seconds during e2e of the API (or producer), the worker and Redis."""
    return Sample(
        side=side,
        drain_rate=drain_rate,
        e2e_rate=e2e_rate,
        rt_p50_ms=percentile(trips, 50) * 1000,
        rt_p95_ms=percentile(trips, 95) * 1000,
        rt_p99_ms=percentile(trips, 99) * 1000,
        worker_cpu_ms=used["worker"] / jobs * 1000,
        api_cpu_ms=used["front"] / jobs * 1000,
        redis_cpu_ms=used["redis"] / jobs * 1000,
        other_cpu_pct=used["other_pct"],
    )


def repetition(rep: int, args: argparse.Namespace) -> list[Sample]:
    """Both sides against one fresh Redis (flushed in between); Kiln first in even ones."""
    runners = {"kiln": run_kiln, "celery": run_anchor}

    def show(sample: Sample) -> None:
        if sample.segments:
            named = zip(SEGMENTS, sample.segments, strict=True)
            parts = ", ".join(f"{name} {ms:.2f}" for name, ms in named)
            print(f"  Kiln round trip, median ms: {parts}", flush=True)

    return both_sides(
        rep,
        ("kiln", "celery"),
        lambda side, server, data_dir: runners[side](args, server, data_dir),
        args,
        bench="e2e",
        headers=HEADERS,
        show=show,
    )


def summary(runs: list[list[Sample]]) -> str:
    """Medians over the repetitions, then Kiln's ratios to raw Celery against the goals."""
    rows = []
    for index, side in enumerate(("kiln", "celery")):
        samples = [run[index] for run in runs]
        rows.append([side, *(median([getattr(s, name) for s in samples]) for name in FIELDS)])
    ratios = {
        "e2e jobs/s": ([run[0].e2e_rate / run[1].e2e_rate for run in runs], f">= {E2E_GOAL}"),
        "drain jobs/s": ([run[0].drain_rate / run[1].drain_rate for run in runs], ""),
        "round trip p50": (
            [run[0].rt_p50_ms / run[1].rt_p50_ms for run in runs],
            f"<= {ROUND_TRIP_GOAL:g}",
        ),
    }
    ratio_rows = [
        [name, median(values), goal, ", ".join(f"{value:.2f}" for value in values)]
        for name, (values, goal) in ratios.items()
    ]
    medians = table([f"median of {len(runs)}", *HEADERS[1:]], rows)
    ratio_headers = ["Kiln / Celery", "median", "goal", "per repetition"]
    segments = [median([run[0].segments[i] for run in runs]) for i in range(len(SEGMENTS))]
    parts = table(["Kiln round trip, ms (median of medians)", *SEGMENTS], [["", *segments]])
    return "\n\n".join([medians, table(ratio_headers, ratio_rows), parts])


def summaries(runs: list[list[Sample]], markdown: str) -> list[dict[str, object]]:
    """Drain, e2e and round trip against raw Celery, for `bench.run_all`."""

    def middle(index: int, name: str) -> float:
        return median([getattr(run[index], name) for run in runs])

    def ratio(name: str) -> float:
        return median([getattr(run[0], name) / getattr(run[1], name) for run in runs])

    e2e, drain, trip = ratio("e2e_rate"), ratio("drain_rate"), ratio("rt_p50_ms")
    latency = {
        side: {"p50": middle(index, "rt_p50_ms"), "p99": middle(index, "rt_p99_ms")}
        for index, side in enumerate(("kiln", "anchor"))
    }
    return [
        bench_summary(
            name="e2e", title="End-to-end jobs", unit="jobs/s",
            kiln=middle(0, "e2e_rate"), anchor=middle(1, "e2e_rate"), ratio=e2e,
            goal=E2E_GOAL, goal_text=f">= {E2E_GOAL} x raw Celery", met=e2e >= E2E_GOAL,
            markdown=markdown,
        ),
        bench_summary(
            name="drain", title="Drain (worker path alone)", unit="jobs/s",
            kiln=middle(0, "drain_rate"), anchor=middle(1, "drain_rate"), ratio=drain,
            goal=0.0, goal_text="none", met=True, markdown=markdown,
        ),
        bench_summary(
            name="round_trip", title="Round trip", unit="ms (p50)",
            kiln=middle(0, "rt_p50_ms"), anchor=middle(1, "rt_p50_ms"), ratio=trip,
            goal=ROUND_TRIP_GOAL, goal_text=f"<= {ROUND_TRIP_GOAL:g} x raw Celery",
            met=trip <= ROUND_TRIP_GOAL, latency_ms=latency, markdown=markdown,
        ),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per batch (drain and e2e)")
    parser.add_argument("--clients", type=int, default=16, help="connections submitting to Kiln")
    parser.add_argument("--round-trips", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0, help="limit per batch, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    parser.add_argument("--json", type=Path, help="also write a summary for bench.run_all here")
    parser.add_argument(
        "--max-other",
        type=float,
        default=20.0,
        help="repeat a measurement (up to twice) when other programs used more CPU than this, "
        "in percent of the machine",
    )
    parser.add_argument(
        "--task-events",
        action="store_true",
        help="both workers send task events from the start, as while Flower watches",
    )
    parser.add_argument(
        "--kiln-app", default="api.main:create_app", help="Kiln's app factory (to try a variant)"
    )
    parser.add_argument(
        "--kiln-worker", default="workers.app", help="Kiln's Celery app for -A (to try a variant)"
    )
    args = parser.parse_args()
    print(machine(), "\n")
    print(f"{args.jobs} jobs per batch, {args.clients} submitting connections to Kiln, "
          f"{args.round_trips} round trips; workers -c {WORKER_CONCURRENCY}\n")  # fmt: skip
    print(table(HEADERS, []))
    runs = [repetition(rep, args) for rep in range(args.reps)]
    print()
    markdown = summary(runs)
    print(markdown)
    write_summaries(args.json, summaries(runs, markdown))


if __name__ == "__main__":
    main()
