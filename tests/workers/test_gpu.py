"""GPU pinning without GPUs: `kiln worker --gpus 0,1` runs one pinned worker per GPU, each
with its own Ollama, announced in the registry, marked busy while it runs a job, and
restarted when it dies."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from shared import keys
from shared.registry import INFO_FIELD
from tests.fakes.ollama import FakeOllama
from tests.harness import Kiln, eventually
from workers.gpu import GPUSelectionError, discover_gpus, parse_gpus

GPUS = (0, 1)
WAIT_S = 120.0  # a ceiling: the machine may be busy starting Python processes
STOP_GRACE_S = 15.0


@pytest.fixture(scope="module")
def backend() -> str:
    # The launcher and the registry never touch the database: SQLite is enough.
    return "sqlite"


@pytest.fixture(scope="module")
def gpu_ollamas() -> Iterator[list[FakeOllama]]:
    """One fake Ollama per GPU, each with a model only it has."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(FakeOllama(models=["llama3.2:1b", f"only-on-gpu{gpu}:latest"]))
            for gpu in GPUS
        ]


@pytest.fixture(scope="module")
def launcher(
    kiln: Kiln, gpu_ollamas: list[FakeOllama], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """`kiln worker --gpus 0,1` as its own process, against the stack's Redis and database."""
    urls = ",".join(f"{gpu}={fake.url}" for gpu, fake in zip(GPUS, gpu_ollamas, strict=True))
    env = {**os.environ, **kiln.stack.env, "KILN_LLM_PROVIDER": "ollama", "KILN_OLLAMA_URLS": urls}
    log = (tmp_path_factory.mktemp("gpu") / "launcher.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "worker", "--gpus", "0,1"],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.terminate()  # the launcher stops its GPU workers itself
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _gpu_workers(kiln: Kiln) -> dict[int, dict[str, Any]]:
    workers = kiln.admin.get("/v1/workers").json()["data"]
    return {w["gpu_index"]: w for w in workers if w["gpu_index"] is not None}


def _both_announced(kiln: Kiln) -> dict[int, dict[str, Any]]:
    workers: dict[int, dict[str, Any]] = eventually(
        lambda: found if set(found := _gpu_workers(kiln)) == set(GPUS) else None,
        "both GPU workers",
        timeout=WAIT_S,
    )
    return workers


def _pace(fakes: list[FakeOllama], *, token_delay: float) -> None:
    """Forget the fakes' earlier requests and make their tokens come `token_delay` apart."""
    for fake in fakes:
        fake.reset()
        fake.token_delay = token_delay


def _wait_all_idle(kiln: Kiln) -> None:
    eventually(
        lambda: all(w["state"] == "idle" for w in _gpu_workers(kiln).values()),
        "idle workers",
        timeout=WAIT_S,
    )


def _pid(kiln: Kiln, hostname: str) -> int | None:
    """The worker's main process, from its registry record (gone once the record expires)."""
    info = kiln.redis.hget(keys.worker_heartbeat(hostname), INFO_FIELD)
    return None if info is None else int(json.loads(info)["pid"])


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def test_each_gpu_gets_a_pinned_worker_with_its_own_ollama(
    kiln: Kiln, launcher: subprocess.Popen[bytes], gpu_ollamas: list[FakeOllama]
) -> None:
    workers = _both_announced(kiln)

    for gpu, fake in zip(GPUS, gpu_ollamas, strict=True):
        worker = workers[gpu]
        assert worker["hostname"].startswith(f"gpu{gpu}@")
        assert worker["queues"] == ["gpu", f"gpu.{gpu}"]
        assert worker["backend_url"] == fake.url
        assert worker["state"] == "idle"
        assert worker["job_id"] is None
        pid = _pid(kiln, worker["hostname"])
        assert pid is not None
        environ = _environ(pid)
        assert environ["CUDA_VISIBLE_DEVICES"] == str(gpu)
        assert environ["KILN_OLLAMA_URL"] == fake.url
    eventually(
        lambda: all(
            f"only-on-gpu{gpu}:latest" in _gpu_workers(kiln)[gpu]["models"] for gpu in GPUS
        ),
        "each GPU worker's own model",
        timeout=WAIT_S,
    )
    assert "only-on-gpu1:latest" not in _gpu_workers(kiln)[0]["models"]


def test_a_gpu_worker_is_busy_with_its_job_then_idle(
    kiln: Kiln, launcher: subprocess.Popen[bytes], gpu_ollamas: list[FakeOllama]
) -> None:
    _both_announced(kiln)
    _pace(gpu_ollamas, token_delay=0.1)
    key = kiln.new_key()
    with kiln.held("worker-gpu"):  # only the pinned workers consume `gpu`
        job = kiln.submit(key, " ".join(f"w{n}" for n in range(30)))
        busy = eventually(
            lambda: [w for w in _gpu_workers(kiln).values() if w["state"] == "busy"],
            "a busy GPU worker",
            timeout=WAIT_S,
        )
        assert [w["job_id"] for w in busy] == [job["id"]]
        assert kiln.wait_for(key, job["id"])["status"] == "succeeded"

    _wait_all_idle(kiln)
    # The job went to the Ollama of the GPU whose worker ran it, and to no other.
    served_by = [gpu for gpu, fake in zip(GPUS, gpu_ollamas, strict=True) if fake.requests]
    assert served_by == [busy[0]["gpu_index"]]


def test_a_killed_gpu_worker_is_restarted(kiln: Kiln, launcher: subprocess.Popen[bytes]) -> None:
    hostname = _both_announced(kiln)[1]["hostname"]
    old_pid = _pid(kiln, hostname)
    assert old_pid is not None

    os.killpg(old_pid, signal.SIGKILL)  # the worker and its pool process

    new_pid = eventually(
        lambda: (pid := _pid(kiln, hostname)) not in (None, old_pid) and pid,
        "the restarted worker",
        timeout=WAIT_S,
    )
    assert _environ(new_pid)["CUDA_VISIBLE_DEVICES"] == "1"
    assert launcher.poll() is None


def test_all_gpus_are_discovered_with_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nvidia-smi"
    # What `nvidia-smi --query-gpu=index --format=csv,noheader` prints on a two-GPU machine.
    fake.write_text('#!/bin/sh\n[ "$1" = --query-gpu=index ] && printf "0\\n1\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert parse_gpus("all") == [0, 1]


def test_without_nvidia_smi_all_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(GPUSelectionError, match="nvidia-smi was not found"):
        discover_gpus()


@pytest.mark.parametrize("spec", ["", "0,x", "-1", "0,0"])
def test_bad_gpu_lists_are_refused(spec: str) -> None:
    with pytest.raises(GPUSelectionError):
        parse_gpus(spec)


def test_a_gpu_worker_is_idle_again_once_its_job_is_canceled(
    kiln: Kiln, launcher: subprocess.Popen[bytes], gpu_ollamas: list[FakeOllama]
) -> None:
    # A job that ends with no outcome of its worker's (here: canceled) is not shown idle by the
    # outcome's round trip, but by one of its own.
    _both_announced(kiln)
    _pace(gpu_ollamas, token_delay=0.2)
    key = kiln.new_key()
    with kiln.held("worker-gpu"):
        job = kiln.submit(key, " ".join(f"w{n}" for n in range(100)))
        eventually(
            lambda: [w for w in _gpu_workers(kiln).values() if w["job_id"] == job["id"]],
            "the GPU worker busy with the job",
            timeout=WAIT_S,
        )
        kiln.client(key).post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
        assert kiln.wait_for(key, job["id"])["status"] == "canceled"

        _wait_all_idle(kiln)
