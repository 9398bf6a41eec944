"""Sending webhook requests: SSRF-checked, pinned to the vetted address, time-limited,
redirects not followed, the answer read only as far as the log needs.

The requests of every batch share one `httpx.AsyncClient` on one event loop per process, which
runs on its own thread so that Celery's worker threads can hand it whole batches.
"""

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import uvloop

from shared.webhooks.ssrf import (
    BlockedDestination,
    VettedURL,
    parse_address,
    pinned_request,
    vet_url,
)

EXCERPT_BYTES = 1024  # of the response body, kept in the delivery log
READ_LIMIT_BYTES = 64 * 1024  # read no further than this, however much the receiver sends
IN_FLIGHT = 8  # requests at once per process; more wait their turn before their clock starts
# httpcore checks every pooled connection on each request, so a small pool is also a fast one.
MAX_CONNECTIONS = IN_FLIGHT

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """What one request came back with (`status_code` None: no HTTP answer)."""

    status_code: int | None
    latency_ms: float
    excerpt: str | None = None
    error: str | None = None
    retry_after: str | None = None
    blocked: bool = False  # refused by the SSRF guard: never retried


class WebhookSender:
    """POSTs signed bodies; one instance (event loop, client and connection pool) per process."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        allow_private: bool,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
            follow_redirects=False,
            trust_env=False,  # no proxy settings from the environment: the URL is the target
        )
        self.slots = asyncio.Semaphore(IN_FLIGHT)  # held from signing to the answer
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="webhook-sender", daemon=True
        )
        self._thread.start()

    def submit(self, work: Coroutine[Any, Any, T]) -> "Future[T]":
        """Run `work` on the sender's event loop; the caller waits on the future."""
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    async def post(self, url: str, body: str, headers: dict[str, str]) -> Answer:
        """Deliver `body` to `url`; never raises for what the receiver or network does. Callers
        hold one of the `slots` meanwhile."""
        started = time.perf_counter()
        try:
            vetted = await self._vet(url)
        except BlockedDestination as exc:
            return Answer(None, 0.0, error=exc.message, blocked=True)
        target, host_headers, extensions = pinned_request(vetted)
        try:
            async with self.client.stream(
                "POST",
                target,
                content=body.encode(),
                headers={**headers, **host_headers},
                extensions=extensions,
            ) as response:
                excerpt = await self._read_excerpt(response, started)
                return Answer(
                    response.status_code,
                    _elapsed_ms(started),
                    excerpt=excerpt,
                    retry_after=response.headers.get("retry-after"),
                )
        except httpx.TimeoutException:
            return Answer(None, _elapsed_ms(started), error=f"timed out after {self.timeout_s}s")
        except httpx.HTTPError as exc:
            return Answer(None, _elapsed_ms(started), error=f"request failed: {type(exc).__name__}")

    async def _vet(self, url: str) -> VettedURL:
        """The SSRF check; a host name's DNS lookup runs off the loop, so it blocks no other
        request of the batch."""
        try:
            literal = parse_address(urlsplit(url).hostname or "") is not None
        except ValueError:
            literal = True  # unparseable: vet_url refuses it without resolving anything
        if literal:
            return vet_url(url, allow_private=self.allow_private)
        return await asyncio.to_thread(vet_url, url, allow_private=self.allow_private)

    async def _read_excerpt(self, response: httpx.Response, started: float) -> str:
        received = bytearray()
        async for chunk in response.aiter_bytes():
            received.extend(chunk)
            if len(received) >= READ_LIMIT_BYTES or _elapsed_ms(started) > self.timeout_s * 1000:
                break
        return bytes(received[:EXCERPT_BYTES]).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Close the client's connections and stop the event loop."""
        self.submit(self.client.aclose()).result(timeout=self.timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
