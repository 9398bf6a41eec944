"""Webhooks: signed, retried, logged, redeliverable, and surviving faults."""

import json
import os
import signal
import time
from typing import Any

import pytest
from standardwebhooks import Webhook

from shared.embedded_redis import free_port
from tests.conftest import KilnFactory
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Received, Reply, receiving
from tests.harness import Kiln

QUICK_RETRIES = {
    "KILN_CALLBACK_ALLOW_PRIVATE": "true",
    "KILN_WEBHOOK_RETRY_SCHEDULE": "0,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}


@pytest.fixture(scope="module")
def kiln_env(ollama_server: FakeOllama) -> dict[str, str]:
    """This module's shared stack may call loopback receivers and retries within seconds."""
    return {**QUICK_RETRIES, "KILN_LLM_PROVIDER": "ollama", "KILN_OLLAMA_URL": ollama_server.url}


@pytest.fixture
def hooked(kiln: Kiln) -> Kiln:
    return kiln


def _submit(kiln: Kiln, key: str, url: str, **fields: Any) -> dict[str, Any]:
    body = {"kind": "generate", "input": {"prompt": "hook me"}, "webhook_url": url, **fields}
    response = kiln.client(key).post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


def _verified(kiln: Kiln, key: str, request: Received) -> dict[str, Any]:
    secret = kiln.client(key).get("/v1/webhook-secret").json()["secret"]
    payload = Webhook(secret).verify(request.body, request.headers)
    assert isinstance(payload, dict)
    return payload


def _deliveries(kiln: Kiln, key: str, job_id: str) -> list[dict[str, Any]]:
    response = kiln.client(key).get(f"/v1/jobs/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def _wait_delivery(
    kiln: Kiln, key: str, job_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in _deliveries(kiln, key, job_id) if d["status"] == status]
        if found:
            return found[0]
        assert time.monotonic() < deadline, _deliveries(kiln, key, job_id)
        time.sleep(0.1)


def test_selected_events_arrive_signed_with_the_job(hooked: Kiln) -> None:
    key = hooked.new_key()
    with receiving() as receiver:
        job = _submit(hooked, key, receiver.url, webhook_events=["job.started", "job.succeeded"])
        started, succeeded = sorted(
            (_verified(hooked, key, r) for r in receiver.wait_for(2)), key=lambda p: p["type"]
        )

    assert (started["type"], succeeded["type"]) == ("job.started", "job.succeeded")
    shown = hooked.client(key).get(f"/v1/jobs/{job['id']}").json()
    assert succeeded["data"]["id"] == job["id"]
    assert succeeded["data"]["status"] == "succeeded"
    assert succeeded["data"]["result"] == shown["result"]
    assert started["data"]["status"] == "running"
    assert {r.headers["webhook-id"] for r in receiver.received} == {
        started["id"],
        succeeded["id"],
    }
    assert {r.headers["content-type"] for r in receiver.received} == {"application/json"}


def test_terminal_events_only_by_default(hooked: Kiln) -> None:
    key = hooked.new_key()
    with receiving() as receiver:
        job = _submit(hooked, key, receiver.url)
        _wait_delivery(hooked, key, job["id"], "succeeded")
        time.sleep(1)

    assert [json.loads(r.body)["type"] for r in receiver.received] == ["job.succeeded"]


def test_three_failures_then_success_keeps_one_webhook_id(hooked: Kiln) -> None:
    key = hooked.new_key()
    with receiving() as receiver:
        receiver.script = [Reply(500), Reply(503), Reply(429)]
        job = _submit(hooked, key, receiver.url)
        delivery = _wait_delivery(hooked, key, job["id"], "succeeded")
        requests = receiver.wait_for(4)

    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    for request in requests:
        _verified(hooked, key, request)
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 429, 200]
    assert [a["outcome"] for a in delivery["attempts"]] == ["retry", "retry", "retry", "succeeded"]
    assert delivery["attempts"][-1]["response_excerpt"] == "ok"
    assert all(a["latency_ms"] >= 0 for a in delivery["attempts"])
    assert delivery["event_id"] == requests[0].headers["webhook-id"]


def test_a_4xx_stops_and_redeliver_sends_it_again(hooked: Kiln) -> None:
    key = hooked.new_key()
    with receiving() as receiver:
        receiver.script = [Reply(400, body=b"bad payload")]
        job = _submit(hooked, key, receiver.url)
        failed = _wait_delivery(hooked, key, job["id"], "failed")
        assert [a["outcome"] for a in failed["attempts"]] == ["failed"]
        assert failed["attempts"][0]["response_excerpt"] == "bad payload"
        assert failed["attempts"][0]["error"] == "the receiver answered 400"
        listed = hooked.client(key).get("/v1/deliveries", params={"status": "failed"}).json()
        assert [d["id"] for d in listed["data"]] == [failed["id"]]

        redelivered = hooked.client(key).post(
            f"/v1/jobs/{job['id']}/deliveries/{failed['id']}/redeliver"
        )
        assert redelivered.status_code == 202
        done = _wait_delivery(hooked, key, job["id"], "succeeded")
        requests = receiver.wait_for(2)

    assert done["id"] == failed["id"]
    assert [a["status_code"] for a in done["attempts"]] == [400, 200]
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]
    assert (
        hooked.client(key).get("/v1/deliveries", params={"status": "failed"}).json()["data"] == []
    )
    again = hooked.client(key).post(f"/v1/jobs/{job['id']}/deliveries/dlv_nope/redeliver")
    assert again.status_code == 404


def test_retry_after_is_honoured(hooked: Kiln) -> None:
    key = hooked.new_key()
    with receiving() as receiver:
        receiver.script = [Reply(429, headers={"Retry-After": "3"})]
        job = _submit(hooked, key, receiver.url)
        first, second = receiver.wait_for(2)
        _wait_delivery(hooked, key, job["id"], "succeeded")

    # The schedule alone would retry within half a second.
    assert second.at - first.at >= 3.0


def test_a_410_stops_every_later_event_of_the_job(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.token_delay = 0.3
    with receiving() as receiver:
        key = kiln.new_key()
        receiver.default = Reply(410)
        job = _submit(kiln, key, receiver.url, webhook_events=["job.started", "job.succeeded"])
        kiln.wait_for(key, job["id"])
        time.sleep(1)

        deliveries = _deliveries(kiln, key, job["id"])

    assert [d["event_type"] for d in deliveries] == ["job.started"]
    assert deliveries[0]["status"] == "failed"
    assert deliveries[0]["attempts"][0]["outcome"] == "gone"
    assert len(receiver.received) == 1


def test_delivery_survives_a_dead_receiver_a_killed_worker_and_a_flushed_redis(
    make_kiln: KilnFactory,
) -> None:
    with make_kiln(**QUICK_RETRIES) as kiln:
        _survive(kiln)


def _survive(hooked: Kiln) -> None:
    key = hooked.new_key()
    port = free_port()
    job = _submit(hooked, key, f"http://127.0.0.1:{port}/hook")
    hooked.wait_for(key, job["id"])
    deadline = time.monotonic() + 30
    while not (d := _deliveries(hooked, key, job["id"])) or not d[0]["attempts"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert d[0]["attempts"][0]["outcome"] == "retry"
    assert d[0]["attempts"][0]["error"].startswith("request failed")

    worker = hooked.stack.services["worker-callbacks"].pid
    assert worker is not None
    os.killpg(worker, signal.SIGKILL)
    hooked.redis.flushall()

    with receiving(port) as receiver:
        delivered = _wait_delivery(hooked, key, job["id"], "succeeded", timeout=90)
        request = receiver.wait_for(1)[0]

    assert _verified(hooked, key, request)["type"] == "job.succeeded"
    assert delivered["attempts"][-1]["status_code"] == 200
    assert request.headers["webhook-id"] == delivered["event_id"]


def test_the_webhook_secret_rotates(hooked: Kiln) -> None:
    key = hooked.new_key()
    client = hooked.client(key)
    first = client.get("/v1/webhook-secret").json()["secret"]
    rotated = client.post("/v1/webhook-secret").json()["secret"]

    assert first.startswith("whsec_")
    assert rotated.startswith("whsec_")
    assert rotated != first
    assert client.get("/v1/webhook-secret").json()["secret"] == rotated
    with receiving() as receiver:
        _submit(hooked, key, receiver.url)
        request = receiver.wait_for(1)[0]
    Webhook(rotated).verify(request.body, request.headers)
