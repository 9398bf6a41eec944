"""Load with an audit: many clients submit jobs with webhooks to a loopback receiver, then the
audit checks that no job was lost, none finished twice and every terminal event arrived once
(after deduplication by `webhook-id`). The chaos tests and `bench/load.py` share it."""

import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from tests.fakes.receiver import Receiver

TERMINAL = ("succeeded", "failed", "canceled")
TERMINAL_EVENTS = {"job.succeeded", "job.failed", "job.canceled"}
SUBMIT_TIMEOUT_S = 30.0


@dataclass
class Submitted:
    job_id: str
    latency_s: float


@dataclass
class Audit:
    """What a load run left behind."""

    submitted: int
    statuses: Counter[str]
    lost: list[str]  # submitted but missing, or never terminal
    finished_twice: list[str]  # more than one distinct terminal event
    undelivered: list[str]  # terminal, but its terminal event never reached the receiver
    duplicate_deliveries: int  # deliveries of an event already seen (retries; deduplicated)
    submit_latencies_s: list[float]
    queue_waits_s: list[float]
    end_to_end_s: list[float]
    settled_at: float  # time.monotonic() when the audit found everything settled

    @property
    def clean(self) -> bool:
        return not (self.lost or self.finished_twice or self.undelivered)


@dataclass
class Load:
    """Submits `count` generate jobs from `clients` threads, each with a webhook to `receiver`.
    A submission that fails (a fault in progress) is retried with the same idempotency key, so a
    retry can never make a second job."""

    url: str
    key: str
    receiver: Receiver
    count: int
    clients: int = 8
    prompt: str = "chaos is a ladder"
    submitted: list[Submitted] = field(default_factory=list)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _next: int = 0

    def start(self) -> "Load":
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self._threads), "submitters hung"

    def audit(self, timeout: float = 180) -> Audit:
        """Wait until every job is terminal and its terminal event delivered, then audit."""
        ids = {item.job_id for item in self.submitted}
        deadline = time.monotonic() + timeout
        while True:
            jobs = self._jobs(ids)
            finished = {job_id for job_id, job in jobs.items() if job["status"] in TERMINAL}
            delivered = set(self._terminal_events())
            if (finished == ids and delivered >= ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        settled_at = time.monotonic()
        events = self._terminal_events()
        seen = Counter(
            request.headers.get("webhook-id") for request in list(self.receiver.received)
        )
        return Audit(
            submitted=len(ids),
            statuses=Counter(job["status"] for job in jobs.values()),
            lost=sorted(ids - finished),
            finished_twice=sorted(job_id for job_id, found in events.items() if len(found) > 1),
            undelivered=sorted(finished - set(events)),
            duplicate_deliveries=sum(count - 1 for count in seen.values()),
            submit_latencies_s=[item.latency_s for item in self.submitted],
            queue_waits_s=[_gap(job, "created_at", "started_at") for job in jobs.values()],
            end_to_end_s=[_gap(job, "created_at", "finished_at") for job in jobs.values()],
            settled_at=settled_at,
        )

    def _client(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        body = {
            "kind": "generate",
            "input": {"prompt": self.prompt},
            "webhook_url": self.receiver.url,
        }
        with httpx.Client(base_url=self.url, headers=headers, timeout=SUBMIT_TIMEOUT_S) as client:
            while (number := self._take()) is not None:
                idempotency = {"Idempotency-Key": f"load-{number}-{uuid.uuid4().hex}"}
                started = time.perf_counter()
                while True:
                    try:
                        response = client.post("/v1/jobs", json=body, headers=idempotency)
                        if response.status_code in (200, 202):
                            break
                        assert response.status_code >= 500, response.text
                    except httpx.TransportError:
                        pass
                    with self._lock:
                        self.retries += 1
                    time.sleep(0.2)
                latency = time.perf_counter() - started
                with self._lock:
                    self.submitted.append(Submitted(response.json()["id"], latency))

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.count:
                return None
            self._next += 1
            return self._next

    def _jobs(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        """The key's jobs among `ids`, read page by page (newest first)."""
        found: dict[str, dict[str, Any]] = {}
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=SUBMIT_TIMEOUT_S) as client:
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 100}
                if cursor:
                    params["cursor"] = cursor
                try:
                    page = client.get("/v1/jobs", params=params).json()
                except (httpx.TransportError, json.JSONDecodeError):
                    return found  # a fault in progress; the caller asks again
                found.update((job["id"], job) for job in page["data"] if job["id"] in ids)
                if not page["has_more"]:
                    return found
                cursor = page["next_cursor"]

    def _terminal_events(self) -> dict[str, set[str]]:
        """For each job, the distinct ids of the terminal events the receiver got."""
        events: dict[str, set[str]] = defaultdict(set)
        for request in list(self.receiver.received):
            payload = json.loads(request.body)
            if 200 <= request.status < 300 and payload["type"] in TERMINAL_EVENTS:
                events[payload["data"]["id"]].add(request.headers["webhook-id"])
        return events


def _gap(job: dict[str, Any], start: str, end: str) -> float:
    if not job.get(start) or not job.get(end):
        return float("nan")
    return (_time(job[end]) - _time(job[start])).total_seconds()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
