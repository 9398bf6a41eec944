"""A lean load generator: N keep-alive HTTP/1.1 connections on one uvloop event loop, each
sending the same request back to back, until a bounded number of requests is done.

It speaks just enough HTTP for a JSON API (Content-Length bodies, no chunking) so that on a
2-core machine it takes as little CPU as possible from the servers it measures.
"""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

CONNECT_TIMEOUT_S = 10.0
BROKEN = 599  # the status recorded when the server closed or reset the connection mid-request


@dataclass
class Phase:
    """What one batch of requests measured."""

    requests: int
    wall_s: float
    cpu_s: float  # this process's CPU time during the batch
    started_at: float  # epoch seconds when the first request went out
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    bodies: list[bytes] = field(default_factory=list)  # kept only when asked

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One POST request with a JSON body, as bytes."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and whether the server closes the connection."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    length, close = -1, False
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length < 0:
        raise RuntimeError(f"response without Content-Length: {status_line}")
    return int(status_line.split()[1]), length, close


class LoadClient:
    """`concurrency` connections to one server; `run` sends a batch through all of them."""

    def __init__(self, host: str, port: int, request: bytes, concurrency: int) -> None:
        self.host, self.port = host, port
        self.request = request
        self.concurrency = concurrency
        self._streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> "LoadClient":
        opening = [self._connect() for _ in range(self.concurrency)]
        self._streams = list(await asyncio.gather(*opening))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for _reader, writer in self._streams:
            writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        opening = asyncio.open_connection(self.host, self.port)
        return await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)

    async def run(self, total: int, *, timeout: float, keep_bodies: bool = False) -> Phase:
        """Send `total` requests over all connections; fail if they take over `timeout`."""
        phase = Phase(requests=total, wall_s=0.0, cpu_s=0.0, started_at=time.time())
        remaining = [total]
        cpu0, t0 = time.process_time(), time.perf_counter()
        loops = [self._loop(i, remaining, phase, keep_bodies) for i in range(self.concurrency)]
        await asyncio.wait_for(asyncio.gather(*loops), timeout)
        phase.wall_s = time.perf_counter() - t0
        phase.cpu_s = time.process_time() - cpu0
        return phase

    async def _loop(self, index: int, remaining: list[int], phase: Phase, keep: bool) -> None:
        reader, writer = self._streams[index]
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            try:
                writer.write(self.request)
                status, length, close = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                body = await reader.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError):
                status, body, close = BROKEN, b"", True
            phase.latencies_s.append(time.perf_counter() - started)
            phase.statuses[status] += 1
            if keep and status < 300:
                phase.bodies.append(body)
            if close:
                writer.close()
                self._streams[index] = await self._connect()
                reader, writer = self._streams[index]
