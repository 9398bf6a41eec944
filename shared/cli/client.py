"""The CLI's client of Kiln's API: base URL and key from settings, every refusal raised as one
error, and Server-Sent Events (a job's resumed after a dropped connection)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import connect_sse

from shared.config import get_settings
from shared.states import TERMINAL

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# The API pings an open event stream every 15 s, so a minute of silence means it is gone.
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
RESUMES = 3  # reconnections of a job's event stream that dropped before the job ended


class ClientError(Exception):
    """A request Kiln refused, or could not answer; `code` and `message` as the API says them."""

    def __init__(self, code: str, message: str, status_code: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status_code = status_code

    def to_json(self) -> dict[str, Any]:
        """The API's error shape."""
        return {"error": {"code": self.code, "message": self.message}}


class Unreachable(ClientError):
    """No answer: connection refused, dropped, or timed out."""


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event with its JSON data."""

    id: str
    event: str
    data: dict[str, Any]

    @property
    def ends_job(self) -> bool:
        return self.event == "status" and self.data.get("status") in TERMINAL

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.event, "data": self.data}


def _refusal(response: httpx.Response) -> ClientError:
    """The error of a 4xx/5xx answer, from the one error shape when it has it."""
    try:
        error = response.json()["error"]
        return ClientError(str(error["code"]), str(error["message"]), response.status_code)
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return ClientError(f"http_{response.status_code}", text, response.status_code)


def _unreachable(base_url: httpx.URL, exc: httpx.TransportError) -> Unreachable:
    return Unreachable(
        "unreachable", f"no answer from Kiln at {base_url}: {exc or type(exc).__name__}"
    )


class KilnClient:
    """Calls one Kiln API with one key."""

    def __init__(
        self, base_url: str, api_key: str | None, transport: httpx.BaseTransport | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=TIMEOUT, transport=transport
        )

    @classmethod
    def from_settings(cls) -> "KilnClient":
        """A client of KILN_API_URL with KILN_API_KEY."""
        settings = get_settings()
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return cls(settings.api_url, key)

    def __enter__(self) -> "KilnClient":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; its JSON answer."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self._http.base_url, exc) from None
        if response.is_error:
            raise _refusal(response)
        return response.json()

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Event]:
        """The Server-Sent Events a request answers with, until the server ends them."""
        try:
            with connect_sse(self._http, method, path, timeout=STREAM_TIMEOUT, **kwargs) as source:
                if source.response.is_error:
                    source.response.read()
                    raise _refusal(source.response)
                for sse in source.iter_sse():
                    yield Event(sse.id, sse.event, json.loads(sse.data) if sse.data else {})
        except httpx.TransportError as exc:
            raise _unreachable(self._http.base_url, exc) from None

    def job_events(self, job_id: str) -> Iterator[Event]:
        """Every event of a job up to its terminal status; a dropped stream is resumed from
        the last event seen (`Last-Event-ID`)."""
        last_id: str | None = None
        resumes = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                for event in self.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers):
                    yield event
                    last_id = event.id or last_id
                    if event.ends_job:
                        return
            except Unreachable:
                if last_id is None or resumes >= RESUMES:
                    raise
            resumes += 1
            if resumes > RESUMES:
                raise Unreachable("stream_ended", f"the events of job {job_id} ended early")
