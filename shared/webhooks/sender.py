"""Sending one webhook request: SSRF-checked, pinned to the vetted address, time-limited,
redirects not followed, the answer read only as far as the log needs."""

import time
from dataclasses import dataclass

import httpx

from shared.webhooks.ssrf import BlockedDestination, pinned_request, vet_url

EXCERPT_BYTES = 1024  # of the response body, kept in the delivery log
READ_LIMIT_BYTES = 64 * 1024  # read no further than this, however much the receiver sends


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
    """POSTs signed bodies; one instance (and connection pool) per process."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        allow_private: bool,
        client: httpx.Client | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            follow_redirects=False,
            trust_env=False,  # no proxy settings from the environment: the URL is the target
        )

    def post(self, url: str, body: str, headers: dict[str, str]) -> Answer:
        """Deliver `body` to `url`; never raises for what the receiver or network does."""
        started = time.perf_counter()
        try:
            vetted = vet_url(url, allow_private=self.allow_private)
        except BlockedDestination as exc:
            return Answer(None, 0.0, error=exc.message, blocked=True)
        target, host_headers, extensions = pinned_request(vetted)
        try:
            with self.client.stream(
                "POST",
                target,
                content=body.encode(),
                headers={**headers, **host_headers},
                extensions=extensions,
            ) as response:
                excerpt = self._read_excerpt(response, started)
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

    def _read_excerpt(self, response: httpx.Response, started: float) -> str:
        received = bytearray()
        for chunk in response.iter_bytes():
            received.extend(chunk)
            if len(received) >= READ_LIMIT_BYTES or _elapsed_ms(started) > self.timeout_s * 1000:
                break
        return bytes(received[:EXCERPT_BYTES]).decode("utf-8", errors="replace")

    def close(self) -> None:
        self.client.close()


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
