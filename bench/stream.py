"""Tokens per second streamed through Kiln's `POST /v1/generate` (`"stream": true`) against
reading the same fake Ollama's `/api/generate` stream directly (the anchor), in the same run.

    uv run python -m bench.stream [--reps 15] [--tokens 500] [--token-delays 0.005,0]

For each token delay (the fake's pause before each token: 0.005 s is a fast GPU, 0 is as fast
as the fake can write), one stack is started: the fake Ollama (`python -m tests.fakes.ollama`),
Kiln's API (one uvicorn worker) and one gpu worker (`celery -A workers.app worker -Q gpu -c 1`),
over a fresh embedded Redis and SQLite. Then, after warm-up, direct and Kiln streams alternate,
`--reps` each. A stream's rate is its tokens over the time from sending the request to the last
token (so Kiln's queueing and claim count against it); the rate from the first token on and the
time to the first token are shown beside it.
"""

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.common import (
    PYTHON,
    bench_summary,
    celery_worker_argv,
    fresh_redis,
    kiln_env,
    machine,
    median,
    percentile,
    prepare_kiln,
    running,
    table,
    uvicorn_argv,
    wait_key,
    wait_quiet,
    wait_until,
    wait_uvicorn,
    write_summaries,
)
from shared import keys
from shared.embedded_redis import free_port

MODEL = "llama3.2:1b"  # the fake's model, and Kiln's default
WARMUP = 3
GOAL = 0.9  # Kiln's streamed tokens/s at least this share of the direct rate


@dataclass(frozen=True)
class Reading:
    """One stream, timed from sending the request."""

    tokens: int
    first_s: float  # until the first token
    last_s: float  # until the last token

    @property
    def rate(self) -> float:
        return self.tokens / self.last_s

    @property
    def steady_rate(self) -> float:
        """Tokens/s from the first token to the last: the stream alone, without the start."""
        return (self.tokens - 1) / (self.last_s - self.first_s)


def _prompt(tokens: int) -> str:
    """A prompt the fake echoes as `tokens` tokens ("Echo:" and one per word)."""
    return " ".join(f"w{i}" for i in range(tokens - 1))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).is_success
    except httpx.TransportError:
        return False


def _timed(lines: Iterator[str], text_of: Callable[[str], str], started: float) -> Reading:
    """Tokens counted as the words of the text the lines carry (the fake's tokens are words),
    so both sides count alike however their lines split the text; timed by the lines that
    carry text."""
    texts: list[str] = []
    first, last = 0.0, 0.0
    for line in lines:
        if text := text_of(line):
            last = time.perf_counter() - started
            first = first or last
            texts.append(text)
    count = len("".join(texts).split())
    if not count:
        raise RuntimeError("the stream carried no tokens")
    return Reading(count, first, last)


def read_direct(client: httpx.Client, url: str, prompt: str) -> Reading:
    """Stream the fake's `/api/generate` as Kiln's Ollama provider does."""
    body = {"model": MODEL, "prompt": prompt, "stream": True}

    def text_of(line: str) -> str:
        return str(json.loads(line).get("response") or "") if line.strip() else ""

    started = time.perf_counter()
    with client.stream("POST", f"{url}/api/generate", json=body) as response:
        response.raise_for_status()
        return _timed(response.iter_lines(), text_of, started)


def read_kiln(client: httpx.Client, prompt: str) -> Reading:
    """Stream `POST /v1/generate` and count the tokens of its `token` events."""
    body = {"prompt": prompt, "stream": True}
    events: list[str] = []

    def text_of(line: str) -> str:
        if line.startswith("event:"):
            events.append(line.removeprefix("event:").strip())
        if line.startswith("data:") and events[-1:] == ["token"]:
            return str(json.loads(line.removeprefix("data:"))["delta"])
        return ""

    started = time.perf_counter()
    with client.stream("POST", "/v1/generate", json=body) as response:
        response.raise_for_status()
        reading = _timed(response.iter_lines(), text_of, started)
    if events[-1:] != ["done"]:
        raise RuntimeError(f"Kiln's stream ended with {events[-1:]}, not done")
    return reading


def measure(delay: float, args: argparse.Namespace, data_dir: Path) -> dict[str, list[Reading]]:
    """Readings of both sides against one stack whose fake pauses `delay` before each token."""
    prompt = _prompt(args.tokens)
    with ExitStack() as stack:
        server = stack.enter_context(fresh_redis(data_dir))
        logs, fake_port, api_port = data_dir / "logs", free_port(), free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        fake_argv = [PYTHON, "-m", "tests.fakes.ollama", "--port", str(fake_port)]
        fake = stack.enter_context(
            running("fake-ollama", [*fake_argv, "--token-delay", str(delay)], env={}, log_dir=logs)
        )
        wait_until("the fake Ollama", lambda: _answers(f"{fake_url}/api/version"), 30, fake)
        env = kiln_env(data_dir, server.url)
        env |= {"KILN_LLM_PROVIDER": "ollama", "KILN_OLLAMA_URL": fake_url}
        prepare_kiln(env)
        api_argv = uvicorn_argv("api.main:create_app", api_port, 1)
        api = stack.enter_context(running("kiln-api", api_argv, env=env, log_dir=logs))
        wait_uvicorn(api, f"http://127.0.0.1:{api_port}/healthz", 1)
        worker_argv = celery_worker_argv("workers.app", "gpu", 1, "gpu@bench")
        worker = stack.enter_context(running("kiln-worker", worker_argv, env=env, log_dir=logs))
        wait_key(redis.Redis.from_url(server.url), keys.worker_heartbeat("gpu@bench"), worker)

        headers = {"Authorization": f"Bearer {env['KILN_ADMIN_API_KEY']}"}
        timeout = httpx.Timeout(60.0)
        direct = stack.enter_context(httpx.Client(timeout=timeout))
        kiln = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=timeout)
        )
        sides: dict[str, Callable[[], Reading]] = {
            "direct": lambda: read_direct(direct, fake_url, prompt),
            "kiln": lambda: read_kiln(kiln, prompt),
        }
        for read in sides.values():
            for _ in range(WARMUP):
                read()
        wait_quiet()
        readings: dict[str, list[Reading]] = {side: [] for side in sides}
        for rep in range(args.reps):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for side in order:
                readings[side].append(sides[side]())
        return readings


def rows(delay: float, readings: dict[str, list[Reading]]) -> list[list[object]]:
    """One row per side: median rates and times; Kiln's ratio to the direct rate."""
    direct_rate = median([r.rate for r in readings["direct"]])
    out: list[list[object]] = []
    for side, taken in readings.items():
        rate = median([r.rate for r in taken])
        steady = median([r.steady_rate for r in taken])
        first_ms = median([r.first_s for r in taken]) * 1000
        last_ms = median([r.last_s for r in taken]) * 1000
        tokens = median([r.tokens for r in taken])
        ratio = rate / direct_rate
        out.append([f"{delay:g}", side, tokens, rate, f"{ratio:.3f}", steady, first_ms, last_ms])
    return out


HEADERS = ["token delay s", "side", "tokens", "tokens/s", "/ direct", "tokens/s after the first"]
HEADERS += ["first token ms", "last token ms"]


def summaries(
    taken: dict[float, dict[str, list[Reading]]], markdown: str
) -> list[dict[str, object]]:
    """Kiln's tokens/s against the direct stream per token delay, for `bench.run_all`; the
    latency is the time to the first token."""
    out = []
    for delay, readings in taken.items():
        kiln = median([r.rate for r in readings["kiln"]])
        direct = median([r.rate for r in readings["direct"]])
        latency = {
            side: {
                "p50": percentile([r.first_s for r in readings[key]], 50) * 1000,
                "p99": percentile([r.first_s for r in readings[key]], 99) * 1000,
            }
            for side, key in (("kiln", "kiln"), ("anchor", "direct"))
        }
        out.append(
            bench_summary(
                name=f"stream_{delay:g}",
                title=f"Streaming, token delay {delay:g} s",
                unit="tokens/s",
                kiln=kiln,
                anchor=direct,
                goal=GOAL,
                goal_text=f">= {GOAL} x direct",
                met=kiln / direct >= GOAL,
                latency_ms=latency,
                extra={"latency": "time to the first token"},
                markdown=markdown,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="streams per side and delay")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per stream")
    parser.add_argument("--token-delays", default="0.005,0", help="comma-separated seconds")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    parser.add_argument("--json", type=Path, help="also write a summary for bench.run_all here")
    args = parser.parse_args()
    print(machine(), "\n")
    print(f"{args.tokens} tokens per stream, {args.reps} streams per side, medians\n")
    all_rows: list[list[object]] = []
    taken: dict[float, dict[str, list[Reading]]] = {}
    for delay in [float(part) for part in args.token_delays.split(",")]:
        data_dir = Path(tempfile.mkdtemp(prefix="kiln-bench-stream-"))
        try:
            taken[delay] = measure(delay, args, data_dir)
            all_rows += rows(delay, taken[delay])
        finally:
            if args.keep:
                print(f"  kept {data_dir}")
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
        print(table(HEADERS, all_rows[-2:]), "\n", flush=True)
    print(f"goal: Kiln >= {GOAL} x direct tokens/s\n")
    markdown = table(HEADERS, all_rows)
    print(markdown)
    write_summaries(args.json, summaries(taken, markdown))


if __name__ == "__main__":
    main()
