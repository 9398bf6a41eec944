"""Chaos: the LLM backend and the webhook receiver failing for a while mid-load."""

import time
from pathlib import Path

from tests.chaos.stacks import PATIENT_SCHEDULE, chaos_stack, survive
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Receiver, Reply


def test_an_llm_backend_refusing_connections_for_10_s(
    tmp_path: Path, backend: str, ollama: FakeOllama, receiver: Receiver
) -> None:
    with chaos_stack(tmp_path, backend, ollama) as chaos:

        def outage() -> None:
            ollama.stop()
            time.sleep(10)
            ollama.start()

        survive(chaos, receiver, "LLM backend down 10 s", outage)


def test_a_webhook_receiver_answering_503_for_30_s(
    tmp_path: Path, backend: str, ollama: FakeOllama, receiver: Receiver
) -> None:
    with chaos_stack(
        tmp_path, backend, ollama, KILN_WEBHOOK_RETRY_SCHEDULE=PATIENT_SCHEDULE
    ) as chaos:

        def outage() -> None:
            receiver.default = Reply(status=503, body=b"maintenance")
            time.sleep(30)
            receiver.default = Reply()

        survive(chaos, receiver, "receiver 503 for 30 s", outage)
