"""`POST /v1/jobs` throughput and latency: Kiln's API against the bare FastAPI + Celery endpoint
(bench/anchors.py), both under uvicorn with the same number of workers, in the same run.

    uv run python -m bench.submit [--reps 3] [--clients 64] [--requests 5000] [--warmup 500]

Each repetition gets a fresh embedded Redis (flushed between the two servers) and a fresh SQLite
file; the order of the two servers alternates between repetitions. No Celery worker runs, so
every message stays queued: this measures the API alone. The load generator runs in this
process, separate from the servers.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench.common import (
    CpuMeter,
    bench_summary,
    both_sides,
    kiln_env,
    machine,
    median,
    percentile,
    prepare_kiln,
    pss_mib,
    rss_mib,
    running,
    server_pids,
    table,
    uvicorn_argv,
    wait_uvicorn,
    write_summaries,
)
from bench.loadgen import LoadClient, Phase, build_request
from shared.embedded_redis import EmbeddedRedis, free_port

PROMPT = "Say hello to the benchmark"
BODY = json.dumps({"kind": "generate", "input": {"prompt": PROMPT}}).encode()
GOAL = 0.6  # Kiln's req/s at least this share of the anchor's
RSS_GROWTH_GOAL = 1.1  # the API's RSS after the load at most this multiple of its idle RSS
IDLE_SETTLE_S = 2.0  # after start-up, before the idle RSS is read
ANCHOR_APP = "bench.anchors:create_app"


@dataclass
class Sample:
    """One server in one repetition."""

    target: str
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_ms: float  # API processes' CPU per request
    redis_cpu_ms: float  # Redis's CPU per request
    loadgen_cpu_pct: float  # the load generator's CPU, in percent of one core
    other_cpu_pct: float  # CPU used by other programs, in percent of the machine (noise)
    idle_rss_mib: float  # uvicorn master + workers, after start-up
    idle_pss_mib: float  # the same as proportional set size (shared pages counted once)
    loaded_rss_mib: float  # the same, after the load

    def row(self) -> list[object]:
        return [self.target, *(getattr(self, name) for name in FIELDS)]


FIELDS = ["rate", "p50_ms", "p99_ms", "errors", "server_cpu_ms", "redis_cpu_ms"]
FIELDS += ["loadgen_cpu_pct", "other_cpu_pct", "idle_rss_mib", "idle_pss_mib", "loaded_rss_mib"]
HEADERS = ["server", "req/s", "p50 ms", "p99 ms", "errors", "API CPU ms/req", "Redis CPU ms/req"]
HEADERS += ["load gen CPU % of 1 core", "other programs' CPU %", "idle RSS MiB", "idle PSS MiB"]
HEADERS += ["RSS after load MiB"]


async def _load(
    args: argparse.Namespace, port: int, key: str, meter: CpuMeter
) -> tuple[Phase, dict[str, float]]:
    """Warm up, then the measured batch; returns it with the CPU used during it."""
    headers = {"Authorization": f"Bearer {key}"}  # the anchor ignores it; same bytes on the wire
    request = build_request("127.0.0.1", port, "/v1/jobs", BODY, headers)
    async with LoadClient("127.0.0.1", port, request, args.clients) as client:
        await client.run(args.warmup, timeout=args.timeout)
        meter.start()
        phase = await client.run(args.requests, timeout=args.timeout)
        return phase, meter.stop()


def measure(
    target: str, args: argparse.Namespace, env: dict[str, str], redis_pid: int, log_dir: Path
) -> Sample:
    """Start one server, read its idle RSS, load it, read its RSS again, stop it."""
    port = free_port()
    argv = uvicorn_argv(args.kiln_app if target == "kiln" else ANCHOR_APP, port, args.workers)
    with running(target, argv, env=env, log_dir=log_dir) as child:
        wait_uvicorn(child, f"http://127.0.0.1:{port}/healthz", args.workers)
        time.sleep(IDLE_SETTLE_S)
        pids = server_pids(child.pid)
        idle, idle_pss = rss_mib(pids), pss_mib(pids)
        each = " + ".join(f"{rss_mib([pid]):.0f}" for pid in pids)
        print(f"  {target} idle RSS {idle:.0f} MiB = master + workers {each}", flush=True)
        key = env.get("KILN_ADMIN_API_KEY", "none")
        meter = CpuMeter({"api": pids, "redis": [redis_pid]})
        phase, used = uvloop.run(_load(args, port, key, meter))
        loaded = rss_mib(server_pids(child.pid))
    if phase.errors:
        print(f"  {target}: {phase.errors} answers were not 2xx: {dict(phase.statuses)}")
    return Sample(
        target=target,
        rate=phase.rate,
        p50_ms=percentile(phase.latencies_s, 50) * 1000,
        p99_ms=percentile(phase.latencies_s, 99) * 1000,
        errors=phase.errors,
        server_cpu_ms=used["api"] / phase.requests * 1000,
        redis_cpu_ms=used["redis"] / phase.requests * 1000,
        loadgen_cpu_pct=100 * phase.cpu_s / phase.wall_s,
        other_cpu_pct=used["other_pct"],
        idle_rss_mib=idle,
        idle_pss_mib=idle_pss,
        loaded_rss_mib=loaded,
    )


def repetition(rep: int, args: argparse.Namespace) -> list[Sample]:
    """Both servers against one fresh Redis; Kiln first in even repetitions."""

    def measure_side(target: str, server: EmbeddedRedis, data_dir: Path) -> Sample:
        assert server.process is not None
        env = {"BENCH_REDIS_URL": server.url}
        if target == "kiln":
            env = kiln_env(data_dir, server.url)
            prepare_kiln(env)
        return measure(target, args, env, server.process.pid, data_dir / "logs")

    return both_sides(rep, ("kiln", "anchor"), measure_side, args, bench="submit", headers=HEADERS)


def summary(runs: list[list[Sample]]) -> str:
    """The medians over repetitions, and Kiln's ratios to the anchor."""
    rows = []
    for index, target in enumerate(("kiln", "anchor")):
        samples = [run[index] for run in runs]
        values = [median([getattr(s, name) for s in samples]) for name in FIELDS]
        rows.append([target, *values])
    ratios = [run[0].rate / run[1].rate for run in runs]
    p50 = [run[0].p50_ms / run[1].p50_ms for run in runs]
    p99 = [run[0].p99_ms / run[1].p99_ms for run in runs]
    lines = [table(["median of " + str(len(runs)), *HEADERS[1:]], rows), ""]
    lines.append(
        table(
            ["Kiln / anchor", "req/s", "p50", "p99", "per repetition (req/s)"],
            [["ratio", median(ratios), median(p50), median(p99),
              ", ".join(f"{r:.2f}" for r in ratios)]],
        )
    )  # fmt: skip
    return "\n".join(lines)


def summaries(runs: list[list[Sample]], markdown: str) -> list[dict[str, object]]:
    """Throughput and memory against the anchor, for `bench.run_all`."""

    def middle(index: int, name: str) -> float:
        return median([getattr(run[index], name) for run in runs])

    ratio = median([run[0].rate / run[1].rate for run in runs])
    growth = middle(0, "loaded_rss_mib") / middle(0, "idle_rss_mib")
    latency = {
        side: {"p50": middle(index, "p50_ms"), "p99": middle(index, "p99_ms")}
        for index, side in enumerate(("kiln", "anchor"))
    }
    submit = bench_summary(
        name="submit",
        title="Submit (POST /v1/jobs)",
        unit="req/s",
        kiln=middle(0, "rate"),
        anchor=middle(1, "rate"),
        ratio=ratio,
        goal=GOAL,
        goal_text=f">= {GOAL} x bare FastAPI + Celery",
        met=ratio >= GOAL,
        latency_ms=latency,
        markdown=markdown,
    )
    memory = bench_summary(
        name="memory",
        title="API idle RSS",
        unit="MiB",
        kiln=middle(0, "idle_rss_mib"),
        anchor=middle(1, "idle_rss_mib"),
        goal=RSS_GROWTH_GOAL,
        goal_text=f"RSS after load <= {RSS_GROWTH_GOAL} x idle (10-minute soak: make soak)",
        met=growth <= RSS_GROWTH_GOAL,
        extra={"kiln_loaded_rss_mib": middle(0, "loaded_rss_mib"), "growth": growth},
        markdown=markdown,
    )
    return [submit, memory]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument("--requests", type=int, default=5000, help="measured, after the warm-up")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers, both servers")
    parser.add_argument("--timeout", type=float, default=120.0, help="limit per batch, seconds")
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
        "--kiln-app", default="api.main:create_app", help="Kiln's app factory (to try a variant)"
    )
    args = parser.parse_args()
    print(machine(), "\n")
    print(f"{args.clients} clients, {args.warmup} warm-up + {args.requests} measured requests, "
          f"{args.workers} uvicorn workers each\n")  # fmt: skip
    print(table(HEADERS, []))
    runs = [repetition(rep, args) for rep in range(args.reps)]
    print()
    markdown = summary(runs)
    print(markdown)
    write_summaries(args.json, summaries(runs, markdown))


if __name__ == "__main__":
    main()
