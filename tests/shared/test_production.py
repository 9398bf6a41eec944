"""Production mode: missing or placeholder secrets stop every process at start-up with the
variable to fix, Flower needs auth, and the API publishes no docs."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from shared import migrate
from shared.config import Settings
from shared.embedded_redis import free_port
from tests.conftest import own_redis

KILN = [sys.executable, "-m", "shared.cli"]
API = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", "0"]
REAL_KEY = "kiln_3vQm9T0bqk2YwzRr8HcPz1uA"
START_TIMEOUT_S = 60.0


def _start(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a Kiln process that is expected to refuse to start (so it exits on its own)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("KILN_")}
    return subprocess.run(
        argv,
        cwd=cwd,  # no stray `.env` is read
        env={**clean, "KILN_ENV": "production", "KILN_DATA_DIR": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "admin_key"),
    [
        ([*KILN, "reconciler"], "changeme"),
        ([*KILN, "worker"], ""),
        ([*KILN, "up", "--no-flower"], "changeme"),
        (API, ""),
    ],
    ids=["reconciler", "worker", "up", "api"],
)
def test_a_placeholder_admin_key_stops_every_process(
    argv: list[str], admin_key: str, tmp_path: Path
) -> None:
    done = _start(argv, tmp_path, KILN_ADMIN_API_KEY=admin_key)

    assert done.returncode != 0
    assert "KILN_ADMIN_API_KEY is missing or a placeholder" in done.stderr
    assert "Traceback" not in done.stderr


def test_kiln_up_refuses_flower_without_auth(tmp_path: Path) -> None:
    done = _start([*KILN, "up"], tmp_path, KILN_ADMIN_API_KEY=REAL_KEY)

    assert done.returncode != 0
    assert "KILN_FLOWER_BASIC_AUTH is missing or a placeholder" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"admin_api_key": "changeme"}, "KILN_ADMIN_API_KEY"),
        ({"publisher": "github"}, "KILN_GITHUB_TOKEN"),
        ({"publisher": "github", "github_token": "changeme"}, "KILN_GITHUB_TOKEN"),
        ({"webhook_secret": "ChangeMe "}, "KILN_WEBHOOK_SECRET"),
        ({"task_secret": ""}, "KILN_TASK_SECRET"),
        ({"openai_api_key": "password"}, "KILN_OPENAI_API_KEY"),
        ({"flower_basic_auth": "admin:changeme"}, "KILN_FLOWER_BASIC_AUTH"),
    ],
)
def test_production_names_the_secret_to_fix(env: dict[str, str], variable: str) -> None:
    settings = {"admin_api_key": REAL_KEY, **env}

    with pytest.raises(ValidationError, match=variable):
        Settings.model_validate({"env": "production", **settings})
    Settings.model_validate({"env": "development", **settings})


def test_production_accepts_real_secrets() -> None:
    settings = Settings.model_validate(
        {
            "env": "production",
            "admin_api_key": REAL_KEY,
            "publisher": "github",
            "github_token": "github_pat_11AAAAAAA0realtoken",
            "flower_basic_auth": "admin:9f8e7d6c5b4a",
        }
    )

    assert settings.production_problems() == []
    assert settings.flower_problem() is None


@pytest.fixture
def production_api(tmp_path: Path) -> Iterator[str]:
    """The API alone, in production mode, on loopback."""
    database_url = f"sqlite:///{tmp_path / 'kiln.db'}"
    migrate.upgrade(database_url)
    port = free_port()
    clean = {name: value for name, value in os.environ.items() if not name.startswith("KILN_")}
    with own_redis(tmp_path / "redis") as redis_server:
        env = {
            **clean,
            "KILN_ENV": "production",
            "KILN_ADMIN_API_KEY": REAL_KEY,
            "KILN_DATA_DIR": str(tmp_path),
            "KILN_DATABASE_URL": database_url,
            "KILN_REDIS_URL": redis_server.url,
        }
        api = subprocess.Popen(
            [*API[:-1], str(port)], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url)
            yield url
        finally:
            api.terminate()
            api.wait(timeout=START_TIMEOUT_S)


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the API at {url} did not start")


def test_production_publishes_no_docs(production_api: str) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        response = httpx.get(production_api + path)

        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
