"""Faults: killed workers, a flushed Redis and a broken LLM backend lose no job and never
complete one twice."""

import os
import signal
import time

from tests.conftest import KilnFactory
from tests.fakes.ollama import FakeOllama
from tests.harness import SHORT_LEASE, Kiln, eventually


def _statuses(kiln: Kiln, key: str, job_id: str) -> list[str]:
    return [e.data["status"] for e in kiln.events(key, job_id) if e.event == "status"]


def test_a_job_survives_its_worker_being_killed(
    make_kiln: KilnFactory, fake_ollama: FakeOllama
) -> None:
    fake_ollama.token_delay = 0.1
    env = {"KILN_LLM_PROVIDER": "ollama", "KILN_OLLAMA_URL": fake_ollama.url, **SHORT_LEASE}
    with make_kiln(**env) as kiln:
        key = kiln.new_key()
        job = kiln.submit(key, " ".join(f"w{n}" for n in range(30)))
        kiln.wait_for(key, job["id"], ("running",))
        eventually(lambda: fake_ollama.requests, "the first attempt reaches Ollama")
        time.sleep(0.5)  # a few tokens in
        worker_pid = kiln.stack.services["worker-gpu"].pid
        assert worker_pid is not None

        os.killpg(worker_pid, signal.SIGKILL)

        finished = kiln.wait_for(key, job["id"], timeout=90)
        assert finished["status"] == "succeeded"
        assert finished["attempt"] == 2
        assert finished["result"]["response"].startswith("Echo: w0 w1")
        assert kiln.stack.services["worker-gpu"].pid != worker_pid
        statuses = _statuses(kiln, key, job["id"])
        assert statuses == ["queued", "running", "queued", "running", "succeeded"]
        assert len(fake_ollama.requests) == 2


def test_queued_jobs_survive_a_flushed_redis(make_kiln: KilnFactory) -> None:
    with make_kiln() as kiln:
        key = kiln.new_key()
        # The reconciler is held too: it would start refilling the queue right after the flush.
        with kiln.held("worker-gpu"), kiln.held("reconciler"):
            ids = [kiln.submit(key, f"job {n}")["id"] for n in range(5)]
            assert kiln.redis.llen("gpu") == 5
            kiln.redis.flushall()
            assert kiln.redis.llen("gpu") == 0

        finished = [kiln.wait_for(key, job_id, timeout=60) for job_id in ids]
        assert [job["status"] for job in finished] == ["succeeded"] * 5
        assert [job["attempt"] for job in finished] == [1] * 5
        assert [job["result"]["response"] for job in finished] == [
            f"Kiln template reply: job {n}" for n in range(5)
        ]
        # The stream went with the flush; the events are rebuilt from the row.
        assert kiln.events(key, ids[0])[-1].data["status"] == "succeeded"


def test_an_unreachable_ollama_fails_the_job_with_llm_unavailable(
    make_kiln: KilnFactory,
) -> None:
    with make_kiln(KILN_LLM_PROVIDER="ollama", KILN_OLLAMA_URL="http://127.0.0.1:9") as kiln:
        key = kiln.new_key()
        job = kiln.submit(key)

        failed = kiln.wait_for(key, job["id"], timeout=60)

        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "llm_unavailable"
        assert "127.0.0.1:9" in failed["error"]["message"]
        assert "Traceback" not in failed["error"]["message"]


def test_llm_errors_fail_the_job_with_their_code(kiln: Kiln, fake_ollama: FakeOllama) -> None:
    key = kiln.new_key()
    unknown = kiln.submit(key, model="no-such-model")
    failed = kiln.wait_for(key, unknown["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "model_not_found"
    assert "no-such-model" in failed["error"]["message"]

    fake_ollama.error_after = 2
    broken = kiln.submit(key, "a b c d e f")
    failed = kiln.wait_for(key, broken["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "llm_error", "message": fake_ollama.error_message}
    tokens = [e for e in kiln.events(key, broken["id"]) if e.event == "token"]
    assert len(tokens) == 2

    fake_ollama.error_after = None
    fake_ollama.disconnect_after = 3
    cut = kiln.submit(key, "a b c d e f")
    failed = kiln.wait_for(key, cut["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "llm_unavailable"
    assert "ended before completion" in failed["error"]["message"]


def test_a_job_whose_worker_keeps_dying_fails_after_max_attempts(
    make_kiln: KilnFactory, fake_ollama: FakeOllama
) -> None:
    fake_ollama.token_delay = 0.2
    with make_kiln(
        KILN_LLM_PROVIDER="ollama",
        KILN_OLLAMA_URL=fake_ollama.url,
        KILN_JOB_MAX_ATTEMPTS="2",
        **SHORT_LEASE,
    ) as kiln:
        key = kiln.new_key()
        job = kiln.submit(key, " ".join(["slow"] * 200))
        for attempt in (1, 2):
            running = kiln.wait_for(key, job["id"], ("running",), timeout=60)
            while running["attempt"] != attempt:
                running = kiln.wait_for(key, job["id"], ("running",), timeout=60)
            pid = kiln.stack.services["worker-gpu"].pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            time.sleep(1)

        failed = kiln.wait_for(key, job["id"], ("failed",), timeout=60)
        assert failed["error"]["code"] == "lease_expired"
        assert failed["attempt"] == 2
