"""Chaos: workers killed outright mid-load."""

from pathlib import Path

from tests.chaos.stacks import chaos_stack, kill, survive
from tests.fakes.ollama import FakeOllama
from tests.fakes.receiver import Receiver


def test_a_killed_gpu_worker(
    tmp_path: Path, backend: str, ollama: FakeOllama, receiver: Receiver
) -> None:
    with chaos_stack(tmp_path, backend, ollama) as chaos:
        survive(chaos, receiver, "SIGKILL gpu worker", lambda: kill(chaos.kiln, "worker-gpu"))


def test_a_killed_callback_worker(
    tmp_path: Path, backend: str, ollama: FakeOllama, receiver: Receiver
) -> None:
    with chaos_stack(tmp_path, backend, ollama) as chaos:
        survive(
            chaos,
            receiver,
            "SIGKILL callback worker",
            lambda: kill(chaos.kiln, "worker-callbacks"),
        )
