"""Supervised child processes, restarted when they die and stopped together: the whole stack
on one machine (API, workers, reconciler, Flower) and the per-GPU workers."""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared import metrics
from shared.cli.forkserver import ForkedProcess, ForkServer, ForkServerGone
from shared.embedded_redis import EmbeddedRedis, answers

log = logging.getLogger(__name__)

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
STOP_GRACE_S = 5.0  # after SIGTERM, how long a child gets before SIGKILL
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
CALLBACK_THREADS = 8
KILN = [sys.executable, "-m", "shared.cli"]


@dataclass
class Service:
    """One supervised child process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    restarts: int = 0
    not_before: float = 0.0
    held: bool = False  # stopped on purpose: not restarted until resumed
    env: dict[str, str] = field(default_factory=dict)  # this child's own additions
    forked: bool = False  # forked by the stack's fork server (same environment as the stack)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


@dataclass(kw_only=True)
class Supervisor:
    """Child processes, each restarted with back-off when it dies, stopped together."""

    env: dict[str, str] = field(default_factory=dict)  # added to every child's environment
    log_dir: Path | None = None  # children's output goes to files here instead of the terminal
    services: dict[str, Service] = field(default_factory=dict)

    def start_services(self) -> None:
        """Start every service not started yet."""
        for service in self.services.values():
            if service.process is None:
                self._spawn(service)

    def _spawn(self, service: Service) -> None:
        # Each child leads its own process group, so Ctrl-C reaches only the supervisor,
        # which then stops every child (and the child's own children) in order.
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{service.name}.log"
        service.process = self._start(service, log_path)
        log.info("started %s (pid %d)", service.name, service.process.pid)

    def _start(
        self, service: Service, log_path: Path | None
    ) -> subprocess.Popen[bytes] | ForkedProcess:
        output = None if log_path is None else log_path.open("ab")
        try:
            return subprocess.Popen(
                service.argv,
                env=self._env_of(service),
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        finally:
            if output is not None:
                output.close()

    def _env_of(self, service: Service) -> dict[str, str]:
        env = {**os.environ, **self.env, **service.env}
        if service.name == "flower":
            env.pop(metrics.MULTIPROC_ENV, None)  # Flower's own metrics are not Kiln's
        return env

    def supervise(self, stop: threading.Event) -> None:
        """Restart dead services, with back-off, until `stop` is set."""
        while not stop.wait(0.2):
            now = time.monotonic()
            for service in self.services.values():
                if service.held or service.process is None or service.process.poll() is None:
                    continue
                if service.not_before == 0.0:
                    delay = RESTART_BACKOFF_S[min(service.restarts, len(RESTART_BACKOFF_S) - 1)]
                    service.not_before = now + delay
                    log.warning(
                        "%s exited with %s; restarting in %.1fs",
                        service.name,
                        service.process.returncode,
                        delay,
                    )
                elif now >= service.not_before:
                    service.restarts += 1
                    service.not_before = 0.0
                    self._spawn(service)

    def hold(self, name: str) -> None:
        """Stop one service and keep it stopped until `resume`."""
        service = self.services[name]
        service.held = True
        _stop_services([service])

    def resume(self, name: str) -> None:
        """Start a held service again."""
        service = self.services[name]
        service.held = False
        self._spawn(service)

    def stop(self) -> None:
        """Stop every service; nothing is left running."""
        _stop_services(list(self.services.values()))


@dataclass(kw_only=True)
class Stack(Supervisor):
    """What `kiln up` and `kiln demo` run."""

    data_dir: Path
    port: int
    flower_port: int | None = None
    flower_auth: str | None = None
    own_redis: bool = False  # always start an embedded Redis (demo, tests)
    worker_concurrency: int = 2
    redis: EmbeddedRedis | None = None
    forkserver: ForkServer | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resolve_redis(self) -> str:
        """KILN_REDIS_URL if set; else a local Redis that answers; else an embedded one."""
        if url := self.env.get("KILN_REDIS_URL"):
            return url
        if not self.own_redis and answers(LOCAL_REDIS_URL):
            return LOCAL_REDIS_URL
        self.redis = EmbeddedRedis(self.data_dir / "redis", persist=not self.own_redis)
        return self.redis.start()

    def start(self) -> None:
        """Start Redis if needed, then every service."""
        self.env["KILN_REDIS_URL"] = self.resolve_redis()
        self.env.setdefault("KILN_PUBLIC_URL", self.api_url)
        # Every process of the stack records into one directory, so the API's /metrics has all.
        metrics_dir = self.data_dir / "metrics"
        metrics.reset_multiprocess_dir(metrics_dir)
        self.env[metrics.MULTIPROC_ENV] = str(metrics_dir)
        api = ["uvicorn", "api.main:create_app", "--factory", "--no-access-log"]
        api += ["--host", "127.0.0.1", "--port", str(self.port)]
        workers = [
            ("worker-gpu", "gpu", 1, "prefork"),
            ("worker-io", "io", self.worker_concurrency, "prefork"),
            # Deliveries wait on the network, so threads overlap them at little memory cost.
            ("worker-callbacks", "callbacks", CALLBACK_THREADS, "threads"),
        ]
        self.services["api"] = Service("api", [sys.executable, "-m", *api], forked=True)
        for name, queue, concurrency, pool in workers:
            argv = [*KILN, "worker", "--queues", queue, "--concurrency", str(concurrency)]
            argv += ["--pool", pool, "--name", f"{name}@%h"]
            self.services[name] = Service(name, argv, forked=True)
        self.services["reconciler"] = Service("reconciler", [*KILN, "reconciler"], forked=True)
        if self.flower_port is not None:
            # Flower sees tasks from the start, unless events were turned off on purpose.
            self.env.setdefault("KILN_TASK_EVENTS", os.environ.get("KILN_TASK_EVENTS", "true"))
            flower = [sys.executable, "-m", "celery", "-A", "workers.app", "flower"]
            flower += [f"--port={self.flower_port}", "--address=127.0.0.1"]
            if self.flower_auth:
                flower.append(f"--basic_auth={self.flower_auth}")
            self.services["flower"] = Service("flower", flower)
        self.forkserver = ForkServer({**os.environ, **self.env})
        self.start_services()

    def _start(
        self, service: Service, log_path: Path | None
    ) -> subprocess.Popen[bytes] | ForkedProcess:
        # Every service is the fork server's child, so that it ends them if the supervisor dies.
        if self.forkserver is not None and self.forkserver.running:
            try:
                if service.forked:
                    return self.forkserver.spawn(service.argv, log_path)
                return self.forkserver.spawn_exec(service.argv, log_path, self._env_of(service))
            except ForkServerGone:
                log.warning("the fork server is gone; %s is started with exec", service.name)
        return super()._start(service, log_path)

    def stop(self) -> None:
        """Stop every service, the fork server and the embedded Redis; nothing is left
        running."""
        super().stop()
        if self.forkserver is not None:
            self.forkserver.stop()
        if self.redis is not None:
            self.redis.stop()


def _stop_services(services: list[Service]) -> None:
    """SIGTERM each service's process group, then SIGKILL whatever outlives the grace time."""
    for service in services:
        _signal_group(service, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for service in services:
        if service.process is None:
            continue
        try:
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", service.name)
        _signal_group(service, signal.SIGKILL)
        service.process.wait()


def _signal_group(service: Service, signum: signal.Signals) -> None:
    if service.process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.process.pid, signum)
