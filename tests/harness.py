"""A running Kiln stack for tests: real API, workers, reconciler and Redis as child processes."""

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
from httpx_sse import connect_sse

from shared import migrate
from shared.cli.client import Event
from shared.cli.stack import Stack
from shared.embedded_redis import free_port

READY_TIMEOUT_S = 60.0
T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "canceled")

STACK_SETTINGS = {
    # A busy reconciler, so lost messages are published again in seconds. The lease outlasts
    # a worker held up for seconds on a busy machine: a job is retried only when a test means it.
    "KILN_LEASE_SECONDS": "20",
    "KILN_RECONCILE_INTERVAL_SECONDS": "0.5",
    "KILN_REQUEUE_AFTER_SECONDS": "1",
    "KILN_LLM_RETRIES": "1",
    "KILN_LOG_LEVEL": "INFO",
}
# For tests that kill a worker mid-job: its job is retried seconds after the kill.
SHORT_LEASE = {"KILN_LEASE_SECONDS": "3"}


@dataclass
class Kiln:
    """A started stack and an admin client for it."""

    stack: Stack
    redis_url: str
    admin_key: str
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.stack.api_url

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.admin_key)

    def new_key(self, name: str = "tester") -> str:
        response = self.admin.post("/v1/keys", json={"name": name})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def submit(self, key: str, prompt: str = "hello there", **fields: Any) -> dict[str, Any]:
        body = {"kind": "generate", "input": {"prompt": prompt, **fields}}
        response = self.client(key).post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return dict(response.json())

    def wait_for(
        self, key: str, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 60
    ) -> dict[str, Any]:
        client = self.client(key)
        deadline = time.monotonic() + timeout
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in statuses:
                return dict(job)
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stayed {job['status']}: {job}")
            time.sleep(0.05)

    def events(
        self, key: str, job_id: str, last_event_id: str | None = None, timeout: float = 60
    ) -> list[Event]:
        """Every SSE event of the job until the server closes the stream."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        received = []
        with connect_sse(
            self.client(key), "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
        ) as source:
            assert source.response.status_code == 200, source.response.read()
            for sse in source.iter_sse():
                received.append(Event(sse.id, sse.event, json.loads(sse.data)))
        return received

    @contextmanager
    def held(self, service: str) -> Iterator[None]:
        """Keep one service stopped for the duration of the block."""
        self.stack.hold(service)
        try:
            yield
        finally:
            self.stack.resume(service)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def eventually(check: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    """The first truthy value `check` returns, polled until `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout} s: {what} (last: {value!r})")
        time.sleep(0.05)
    return value


def cmdline(pid: int) -> bytes:
    """A process's command line as /proc has it (NUL-separated); empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_ready(url: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                # Kiln's answer, not another server's that took the port first.
                assert response.text.startswith('{"status":"ready"'), response.text[:200]
                return
            last = response.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise AssertionError(f"Kiln at {url} did not become ready: {last}")


@contextmanager
def running_kiln(
    data_dir: Path, database_url: str, redis_url: str, env: dict[str, str] | None = None
) -> Iterator[Kiln]:
    """Start a stack against the given database and Redis; stop it (and everything) after."""
    admin_key = "kiln_test_" + secrets.token_urlsafe(16)
    migrate.upgrade(database_url)
    stack = Stack(
        data_dir=data_dir,
        port=free_port(),
        env={
            "KILN_DATA_DIR": str(data_dir),
            "KILN_DATABASE_URL": database_url,
            "KILN_REDIS_URL": redis_url,
            "KILN_ADMIN_API_KEY": admin_key,
            "KILN_LLM_PROVIDER": "template",
            **STACK_SETTINGS,
            **(env or {}),
        },
        log_dir=data_dir / "logs",
    )
    stop = threading.Event()
    supervisor = threading.Thread(target=stack.supervise, args=(stop,), daemon=True)
    kiln = Kiln(stack=stack, redis_url=redis_url, admin_key=admin_key)
    try:
        stack.start()
        supervisor.start()
        wait_ready(stack.api_url)
        yield kiln
    finally:
        stop.set()
        if supervisor.is_alive():
            supervisor.join()
        kiln.close()
        stack.stop()
