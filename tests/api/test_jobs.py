"""The job lifecycle through the real API, Redis and workers."""

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shared.cli.stack import KILN
from shared.embedded_redis import free_port
from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln, eventually


def test_generate_job_succeeds_and_streams_tokens_in_order(
    kiln: Kiln, fake_ollama: FakeOllama
) -> None:
    key = kiln.new_key()
    response = kiln.client(key).post(
        "/v1/jobs", json={"kind": "generate", "input": {"prompt": "one two three four"}}
    )
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert job["status"] == "queued"
    assert job["attempt"] == 1

    events = kiln.events(key, job["id"])

    statuses = [event.data["status"] for event in events if event.event == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    tokens = [event.data["delta"] for event in events if event.event == "token"]
    assert "".join(tokens) == "Echo: one two three four"
    assert len(tokens) == 5
    assert events[-1].event == "status"
    ids = [event.id for event in events]
    assert len(set(ids)) == len(ids)
    result = events[-1].data["result"]
    assert result["response"] == "Echo: one two three four"
    assert result["provider"] == "ollama"
    assert result["eval_count"] == 5
    assert result["total_duration"] > 0

    finished = kiln.client(key).get(f"/v1/jobs/{job['id']}").json()
    assert finished["status"] == "succeeded"
    assert finished["result"] == result
    assert finished["started_at"] is not None
    assert finished["finished_at"] is not None
    assert fake_ollama.requests[-1]["model"] == "llama3.2:1b"


def test_events_resume_after_last_event_id(kiln: Kiln) -> None:
    key = kiln.new_key()
    job = kiln.submit(key, "alpha beta gamma")
    everything = kiln.events(key, job["id"])
    assert everything[-1].data["status"] == "succeeded"

    middle = everything[2]
    later = kiln.events(key, job["id"], last_event_id=middle.id)

    assert later == everything[3:]


def test_events_of_a_finished_job_are_rebuilt_when_the_stream_is_gone(kiln: Kiln) -> None:
    key = kiln.new_key()
    job = kiln.submit(key, "short")
    kiln.wait_for(key, job["id"])
    kiln.redis.delete(f"kiln:job:{job['id']}:events")

    events = kiln.events(key, job["id"])

    assert [event.data["status"] for event in events] == ["queued", "running", "succeeded"]
    assert events[-1].data["result"]["response"] == "Echo: short"


def test_cancel_a_queued_job(kiln: Kiln) -> None:
    key = kiln.new_key()
    with kiln.held("worker-gpu"):
        job = kiln.submit(key)
        response = kiln.client(key).post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    events = kiln.events(key, job["id"])
    assert [event.data["status"] for event in events] == ["queued", "canceled"]
    assert kiln.wait_for(key, job["id"])["status"] == "canceled"


def test_cancel_a_running_job_stops_its_worker(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    fake_ollama.token_delay = 0.2
    key = kiln.new_key()
    job = kiln.submit(key, " ".join(["word"] * 100))
    kiln.wait_for(key, job["id"], ("running",))

    canceled = kiln.client(key).post(f"/v1/jobs/{job['id']}/cancel")

    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["error"]["code"] == "canceled"
    # The gpu worker is free again: the next job runs to the end.
    fake_ollama.token_delay = 0.0
    follow_up = kiln.submit(key, "next")
    assert kiln.wait_for(key, follow_up["id"], timeout=20)["status"] == "succeeded"
    assert kiln.wait_for(key, job["id"])["status"] == "canceled"
    again = kiln.client(key).post(f"/v1/jobs/{follow_up['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_cancelable"


def test_concurrent_submissions_with_one_idempotency_key_make_one_job(kiln: Kiln) -> None:
    key = kiln.new_key()
    body = {"kind": "generate", "input": {"prompt": "once"}}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-42"}

    def submit(_: int) -> httpx.Response:
        return httpx.post(f"{kiln.url}/v1/jobs", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(submit, range(20)))

    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    listed = kiln.client(key).get("/v1/jobs").json()["data"]
    assert len(listed) == 1

    other_body = {"kind": "generate", "input": {"prompt": "twice"}}
    reused = httpx.post(f"{kiln.url}/v1/jobs", json=other_body, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


def test_list_filters_and_paginates_newest_first(kiln: Kiln) -> None:
    key = kiln.new_key()
    client = kiln.client(key)
    with kiln.held("worker-gpu"):
        ids = [kiln.submit(key, f"job {n}")["id"] for n in range(5)]
        client.post(f"/v1/jobs/{ids[0]}/cancel")
        first = client.get("/v1/jobs", params={"limit": 2}).json()
        second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]})
        third = client.get("/v1/jobs", params={"limit": 2, "cursor": second.json()["next_cursor"]})
        by_kind = client.get("/v1/jobs", params={"kind": "generate", "status": "queued"}).json()
    second, third = second.json(), third.json()

    pages = [job["id"] for page in (first, second, third) for job in page["data"]]
    assert pages == ids[::-1]
    assert (first["has_more"], second["has_more"], third["has_more"]) == (True, True, False)
    canceled = client.get("/v1/jobs", params={"status": "canceled"}).json()["data"]
    assert [job["id"] for job in canceled] == [ids[0]]
    assert len(by_kind["data"]) == 4


def test_the_request_id_follows_the_job_into_every_log(kiln: Kiln) -> None:
    key = kiln.new_key()
    response = kiln.client(key).post(
        "/v1/jobs",
        json={"kind": "generate", "input": {"prompt": "trace me"}},
        headers={"X-Request-ID": "trace-abc-123"},
    )
    job_id = response.json()["id"]
    kiln.wait_for(key, job_id)
    log_dir = kiln.stack.log_dir
    assert log_dir is not None

    def lines(name: str) -> list[dict[str, Any]]:
        text = (log_dir / f"{name}.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    api = [line for line in lines("api") if line.get("request_id") == "trace-abc-123"]
    assert any(job_id in line["message"] for line in api)

    def worker_lines() -> list[dict[str, Any]] | None:
        found = [line for line in lines("worker-gpu") if line.get("job_id") == job_id]
        return found if len(found) >= 2 else None

    # The worker logs the end just after it records it; wait_for can see the record first.
    worker = eventually(worker_lines, "the worker logs the job's end")
    assert [line["message"] for line in worker] == ["job started", "job succeeded"]
    assert {line["request_id"] for line in worker} == {"trace-abc-123"}


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _metrics(kiln: Kiln) -> Series:
    return _scrape(f"{kiln.url}/metrics")


def _scrape(url: str) -> Series:
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_jobs_queue_depth_and_tokens_across_processes(kiln: Kiln) -> None:
    key = kiln.new_key()
    before = _metrics(kiln)
    with kiln.held("worker-gpu"):
        job = kiln.submit(key, "count these four")
        waiting = _metrics(kiln)
    kiln.wait_for(key, job["id"])
    after = _metrics(kiln)

    def delta(name: str, **labels: str) -> float:
        series = (name, tuple(sorted(labels.items())))
        return after.get(series, 0.0) - before.get(series, 0.0)

    assert waiting[("kiln_queue_depth", (("queue", "gpu"),))] >= 1
    assert after[("kiln_queue_depth", (("queue", "gpu"),))] == 0
    assert delta("kiln_jobs_submitted_total", kind="generate") == 1  # counted by the API
    assert delta("kiln_jobs_finished_total", kind="generate", status="succeeded") == 1  # worker
    assert delta("kiln_job_queue_wait_seconds_count", kind="generate") == 1
    assert delta("kiln_job_run_seconds_count", kind="generate", status="succeeded") == 1
    assert delta("kiln_tokens_generated_total", kind="generate") == 4


def test_a_worker_on_its_own_serves_its_metrics_on_kiln_metrics_port(kiln: Kiln) -> None:
    port = free_port()
    env = {**os.environ, **kiln.stack.env, "KILN_METRICS_PORT": str(port)}
    del env["PROMETHEUS_MULTIPROC_DIR"]  # as in a container: nothing shared with the API
    argv = [*KILN, "worker", "--queues", "gpu", "--name", "standalone@%h"]
    key = kiln.new_key()
    with kiln.held("worker-gpu"):
        worker = subprocess.Popen(argv, env=env, start_new_session=True)
        try:
            job = kiln.submit(key, "counted elsewhere")
            kiln.wait_for(key, job["id"], timeout=120)
            series = _scrape(f"http://127.0.0.1:{port}/metrics")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)

    finished = ("kiln_jobs_finished_total", (("kind", "generate"), ("status", "succeeded")))
    assert series[finished] == 1  # recorded in a prefork child, served by the main process
