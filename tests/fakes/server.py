"""What every fake server shares: a Starlette app served by uvicorn on a loopback port, in a
background thread (`with Fake() as fake:`) or in the foreground (`python -m tests.fakes.x`)."""

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette

START_TIMEOUT_S = 10.0


def bind(host: str, port: int) -> socket.socket:
    """A socket bound (not yet listening) to host:port; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class LoopbackServer:
    """A fake's server side; subclasses build `self.app` and name themselves in `label`."""

    label = "fake server"

    def __init__(self, app: Starlette, *, host: str, port: int, path: str = "") -> None:
        self.app = app
        self.host = host
        self._socket: socket.socket | None = bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}{path}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Serve in a background thread; after `stop()` this serves again on the same port."""
        self._server = self._new_server(log_config=None, access_log=False)
        self._thread = threading.Thread(
            target=self._server.run, args=([self._take_socket()],), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut down; streams still running are cut, as a stopped server cuts them."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=START_TIMEOUT_S)
        self._server = self._thread = None

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM (the `python -m` entry point)."""
        sock = self._take_socket()
        sock.listen()  # queue early clients instead of refusing them while uvicorn starts
        print(f"{self.label} listening on {self.url}", flush=True)
        self._server = self._new_server()
        self._server.run([sock])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _new_server(self, **config: Any) -> uvicorn.Server:
        return uvicorn.Server(uvicorn.Config(self.app, lifespan="off", ws="none", **config))

    def _take_socket(self) -> socket.socket:
        """The bound socket, handed over once: uvicorn closes it when it shuts down."""
        sock = self._socket or bind(self.host, self.port)
        self._socket = None
        return sock

    def _stopping(self) -> bool:
        return self._server is not None and self._server.should_exit

    async def _pause(self, seconds: float) -> None:
        """Sleep like a slow backend, but wake up when the server is stopping."""
        deadline = time.monotonic() + seconds
        while not self._stopping() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))
