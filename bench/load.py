"""Load: N template jobs from C concurrent clients as fast as the API takes them, each with a
webhook to a loopback receiver; then the audit (no job lost, none finished twice, every terminal
event delivered once after deduplication) and the rates and latencies.

    uv run python -m bench.load --jobs 20000 --clients 64
"""

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import machine, percentile, table
from shared.embedded_redis import EmbeddedRedis
from tests.chaos.load import Audit, Load
from tests.fakes.receiver import receiving
from tests.harness import running_kiln

ENV = {
    "KILN_LLM_PROVIDER": "template",
    "KILN_CALLBACK_ALLOW_PRIVATE": "true",
    "KILN_LOG_LEVEL": "WARNING",
}


def _row(name: str, values: Sequence[float]) -> list[object]:
    finite = [value for value in values if not math.isnan(value)]
    return [name, f"{percentile(finite, 50) * 1000:.1f}", f"{percentile(finite, 99) * 1000:.1f}"]


def report(audit: Audit, submit_s: float, total_s: float, retries: int) -> str:
    lines = [
        f"jobs {audit.submitted}: {dict(audit.statuses)}",
        f"submitted at {audit.submitted / submit_s:.0f} jobs/s; all done and delivered at "
        f"{audit.submitted / total_s:.0f} jobs/s ({total_s:.1f} s)",
        f"lost {len(audit.lost)}, finished twice {len(audit.finished_twice)}, "
        f"undelivered {len(audit.undelivered)}, submissions retried {retries}, "
        f"redeliveries {audit.duplicate_deliveries}",
        "",
        table(
            ["latency", "p50 ms", "p99 ms"],
            [
                _row("submit", audit.submit_latencies_s),
                _row("queue wait", audit.queue_waits_s),
                _row("end to end", audit.end_to_end_s),
            ],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--database", help="SQLAlchemy URL; default: a new SQLite file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kiln-load-") as scratch:
        directory = Path(scratch)
        redis_server = EmbeddedRedis(directory / "redis", persist=False)
        database = args.database or f"sqlite:///{directory / 'kiln.db'}"
        try:
            redis_server.start()
            with (
                receiving() as receiver,
                running_kiln(directory / "stack", database, redis_server.url, ENV) as kiln,
            ):
                key = kiln.new_key("load")
                started = time.monotonic()
                load = Load(kiln.url, key, receiver, args.jobs, args.clients).start()
                load.join(timeout=3600)
                submitted = time.monotonic()
                audit = load.audit(timeout=3600)
        finally:
            redis_server.stop()
    print(machine())
    print(report(audit, submitted - started, audit.settled_at - started, load.retries))
    sys.exit(0 if audit.clean else 1)


if __name__ == "__main__":
    main()
