"""The GPU launcher: one Celery worker process per GPU, started with only that GPU visible and
that GPU's Ollama, restarted with back-off when it dies (`kiln worker --gpus all|0,1`)."""

import shutil
import signal
import subprocess
import threading

from shared.cli.stack import KILN, Service, Supervisor
from shared.config import Settings
from shared.queues import QUEUE_GPU

NVIDIA_SMI_TIMEOUT_S = 30.0
NVIDIA_SMI_QUERY = ["--query-gpu=index", "--format=csv,noheader"]


class GPUSelectionError(Exception):
    """The GPUs to run on could not be discovered or were given wrongly."""


def gpu_queue(index: int) -> str:
    """The queue only the worker of this GPU consumes (besides the shared `gpu` queue)."""
    return f"{QUEUE_GPU}.{index}"


def discover_gpus() -> list[int]:
    """The indexes of this machine's GPUs, as `nvidia-smi` lists them."""
    command = shutil.which("nvidia-smi")
    if command is None:
        raise GPUSelectionError("nvidia-smi was not found: name the GPUs instead, e.g. --gpus 0,1")
    try:
        done = subprocess.run(
            [command, *NVIDIA_SMI_QUERY],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise GPUSelectionError(f"nvidia-smi could not list the GPUs: {exc}") from exc
    gpus = [int(line) for line in done.stdout.split()]
    if not gpus:
        raise GPUSelectionError("nvidia-smi lists no GPU")
    return gpus


def parse_gpus(spec: str) -> list[int]:
    """`all` (discovered with nvidia-smi) or comma-separated GPU indexes such as `0,1`."""
    if spec.strip().lower() == "all":
        return discover_gpus()
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise GPUSelectionError(f"--gpus takes `all` or GPU indexes such as 0,1, not {spec!r}")
    gpus = [int(part) for part in parts]
    if len(set(gpus)) != len(gpus):
        raise GPUSelectionError(f"--gpus names a GPU twice: {spec!r}")
    return gpus


def gpu_worker(index: int, settings: Settings) -> Service:
    """The worker of one GPU: queues `gpu` and `gpu.<index>`, one task at a time."""
    argv = [*KILN, "worker", "--queues", f"{QUEUE_GPU},{gpu_queue(index)}"]
    argv += ["--concurrency", "1", "--name", f"gpu{index}@%h"]
    env = {
        # nvidia-smi numbers GPUs by PCI bus; CUDA must count them the same way.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": str(index),
        "KILN_GPU_INDEX": str(index),
        "KILN_OLLAMA_URL": settings.gpu_ollama_urls.get(index, settings.ollama_url),
        "KILN_METRICS_PORT": "0",  # the launcher serves every GPU worker's metrics
    }
    return Service(f"gpu{index}", argv, env=env)


def run_gpu_workers(gpus: list[int], settings: Settings) -> None:
    """Run one worker per GPU until SIGTERM or SIGINT, then stop them all."""
    supervisor = Supervisor(services={f"gpu{index}": gpu_worker(index, settings) for index in gpus})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor.start_services()
    try:
        supervisor.supervise(stop)
    finally:
        supervisor.stop()
