"""Soak: a steady stream of template jobs for a set time while the RSS of the API and of each
worker is sampled; a leak shows as a slope. Writes a plot and prints first-minute against
last-minute memory per process group (goal: the API within 10 %).

    uv run python -m bench.soak --minutes 10 --rate 40
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")  # files only: no display here
import matplotlib.pyplot as plt

from bench.common import machine, median, rss_mib, table, tree
from shared.embedded_redis import EmbeddedRedis
from tests.harness import Kiln, running_kiln

ENV = {"KILN_LLM_PROVIDER": "template", "KILN_LOG_LEVEL": "WARNING"}
GROUPS = ("api", "worker-gpu", "worker-io", "worker-callbacks", "reconciler")
API_FLAT_WITHIN = 0.10


def submit_steadily(kiln: Kiln, key: str, rate: float, stop: threading.Event) -> int:
    """Submit `rate` jobs a second until `stop`; returns how many went in."""
    sent = 0
    started = time.monotonic()
    with httpx.Client(
        base_url=kiln.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                body = {"kind": "generate", "input": {"prompt": f"soak {sent}"}}
                client.post("/v1/jobs", json=body).raise_for_status()
                sent += 1
            stop.wait(0.05)
    return sent


def sample(kiln: Kiln) -> dict[str, float]:
    readings = {}
    for name in GROUPS:
        pid = kiln.stack.services[name].pid
        readings[name] = rss_mib(tree(pid)) if pid else float("nan")
    return readings


def plot(times: list[float], samples: list[dict[str, float]], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name in GROUPS:
        axes.plot([t / 60 for t in times], [s[name] for s in samples], label=name)
    axes.set_xlabel("minutes")
    axes.set_ylabel("RSS, MiB (process and its children)")
    axes.set_title("Kiln soak: memory over time")
    axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="jobs submitted per second")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--plot", type=Path, default=Path("bench/soak.png"))
    args = parser.parse_args()

    times: list[float] = []
    samples: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="kiln-soak-") as scratch:
        directory = Path(scratch)
        redis_server = EmbeddedRedis(directory / "redis", persist=False)
        try:
            redis_server.start()
            database = f"sqlite:///{directory / 'kiln.db'}"
            with running_kiln(directory / "stack", database, redis_server.url, ENV) as kiln:
                key = kiln.new_key("soak")
                stop = threading.Event()
                counted: list[int] = []
                submitter = threading.Thread(
                    target=lambda: counted.append(submit_steadily(kiln, key, args.rate, stop))
                )
                submitter.start()
                started = time.monotonic()
                while (elapsed := time.monotonic() - started) < args.minutes * 60:
                    times.append(elapsed)
                    samples.append(sample(kiln))
                    time.sleep(args.every)
                stop.set()
                submitter.join()
        finally:
            redis_server.stop()

    plot(times, samples, args.plot)
    window = max(1, int(60 / args.every))
    rows = []
    for name in GROUPS:
        first = median([s[name] for s in samples[:window]])
        last = median([s[name] for s in samples[-window:]])
        rows.append([name, f"{first:.0f}", f"{last:.0f}", f"{(last - first) / first:+.1%}"])
    api_first, api_last = float(rows[0][1]), float(rows[0][2])
    flat = abs(api_last - api_first) <= API_FLAT_WITHIN * api_first
    print(machine())
    print(f"{counted[0] if counted else 0} jobs over {args.minutes:g} min at {args.rate:g}/s")
    print(table(["process group", "first min MiB", "last min MiB", "change"], rows))
    print(f"API flat within {API_FLAT_WITHIN:.0%}: {'yes' if flat else 'NO'}; plot: {args.plot}")


if __name__ == "__main__":
    main()
