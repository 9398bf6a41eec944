"""The Makefile's targets run the commands they promise (read with `make -n`, nothing runs)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def planned(*arguments: str) -> list[str]:
    """The commands `make` would run."""
    assert MAKE is not None
    done = subprocess.run(
        [MAKE, "-n", *arguments], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("setup", "uv sync --frozen"),
        ("up", "docker compose -f docker-compose.yml up -d --build"),
        ("down", "docker compose -f docker-compose.yml down"),
        ("logs", "docker compose -f docker-compose.yml logs -f --tail=100"),
        ("migrate", "docker compose -f docker-compose.yml run --rm migrate"),
        ("test", "uv run pytest"),
        ("lint", "uv run mypy ."),
        ("format", "uv run ruff format ."),
        ("bench", "uv run python -m bench.run_all"),
        ("fuzz", "KILN_FUZZ_EXAMPLES=500 uv run pytest tests/fuzz -q"),
        ("soak", "uv run python -m bench.soak"),
    ],
)
def test_target_runs(target: str, command: str) -> None:
    assert command in planned(target)


def test_cpu_adds_the_cpu_only_override() -> None:
    assert planned("up", "CPU=1") == [
        "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up -d --build"
    ]
