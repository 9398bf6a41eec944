"""What the backends reached over HTTP share: one client with their time-outs, and httpx's
transport errors turned into `LLMUnavailable`."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import httpx

from shared.exceptions import LLMUnavailable


class HttpBackend:
    """A backend at `base_url`; `server` names its kind in errors ("Ollama at <url> …")."""

    server: ClassVar[str]

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._label = f"{self.server} at {self.base_url}"
        # The read timeout bounds the wait for each streamed line, not the whole generation.
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the HTTP client, unless it was injected (its owner closes it)."""
        if self._owns_client:
            self._client.close()

    @contextmanager
    def _errors_mapped(self) -> Iterator[None]:
        """Turn httpx's transport errors into `LLMUnavailable`, keeping tracebacks out of it."""
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise LLMUnavailable(f"{self._label} could not be reached") from exc
        except httpx.TimeoutException as exc:
            raise LLMUnavailable(f"{self._label} timed out") from exc
        except httpx.TransportError as exc:  # RemoteProtocolError, ReadError: the peer hung up
            raise LLMUnavailable(
                f"{self._label} dropped the connection: stream ended before completion"
            ) from exc
