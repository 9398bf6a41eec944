"""Flower as `kiln up` starts it: behind basic auth, listing the workers and the tasks they ran,
looked at in headless Chromium."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from shared.embedded_redis import free_port
from tests.browser import browser_page, screenshot
from tests.conftest import fresh_database, own_redis
from tests.harness import wait_ready

USER = "operator"
PASSWORD = "flower-" + secrets.token_hex(8)
STOP_TIMEOUT_S = 30.0  # `kiln up` gives each child a grace time, then kills it
# `kiln up` starts six processes from cold; on a busy machine that takes a while.
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class KilnUp:
    """A running `kiln up` and where its API and Flower answer."""

    api_url: str
    flower_url: str
    admin_key: str


def wait_for_workers(flower_url: str) -> None:
    """Until Flower has heard from the three workers, so it sees every task after this."""
    deadline = time.monotonic() + START_TIMEOUT_S
    names: list[str] = []
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(
                f"{flower_url}/api/workers?refresh=1", auth=(USER, PASSWORD), timeout=5
            )
            names = list(answer.json()) if answer.status_code == 200 else []
        except httpx.TransportError:
            names = []
        if len(names) >= 3:
            return
        time.sleep(0.2)
    raise AssertionError(f"Flower at {flower_url} lists only {names}")


@pytest.fixture(scope="module")
def kiln_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnUp]:
    """`kiln up` with Flower on, its own Redis and SQLite (Flower reads only Redis, so one
    database is enough here)."""
    directory: Path = tmp_path_factory.mktemp("kiln-up")
    api_port, flower_port = free_port(), free_port()
    admin_key = "kiln_test_" + secrets.token_urlsafe(16)
    with (
        own_redis(directory / "redis") as redis_server,
        fresh_database("sqlite", directory / "db") as database_url,
        (directory / "kiln-up.log").open("wb") as log,
    ):
        env = {
            **os.environ,
            "KILN_DATA_DIR": str(directory / "data"),
            "KILN_DATABASE_URL": database_url,
            "KILN_REDIS_URL": redis_server.url,
            "KILN_ADMIN_API_KEY": admin_key,
            "KILN_LLM_PROVIDER": "template",
            "KILN_FLOWER_PORT": str(flower_port),
            "KILN_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}",
        }
        up = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--port", str(api_port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            running = KilnUp(
                f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{flower_port}", admin_key
            )
            wait_ready(running.api_url, timeout=START_TIMEOUT_S)
            wait_for_workers(running.flower_url)
            yield running
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()


def test_flower_needs_its_password(kiln_up: KilnUp) -> None:
    assert httpx.get(f"{kiln_up.flower_url}/workers").status_code == 401
    wrong = httpx.get(f"{kiln_up.flower_url}/workers", auth=(USER, "not-the-password"))
    assert wrong.status_code == 401


def test_flower_lists_the_workers_and_the_task_of_a_job(kiln_up: KilnUp) -> None:
    api = httpx.Client(
        base_url=kiln_up.api_url, headers={"Authorization": f"Bearer {kiln_up.admin_key}"}
    )
    with api:
        job = api.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "flower"}})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 60
        while api.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, api.get(f"/v1/jobs/{job_id}").text
            time.sleep(0.1)

    credentials = {"username": USER, "password": PASSWORD}
    with browser_page(http_credentials=credentials) as page:
        page.goto(f"{kiln_up.flower_url}/workers")
        for worker in ("worker-gpu", "worker-io", "worker-callbacks"):
            # `kiln up` names each worker node `<role>@<host>`.
            expect(page.locator("body")).to_contain_text(f"{worker}@{socket.gethostname()}")
        assert screenshot(page, "flower-workers").stat().st_size > 0

        page.goto(f"{kiln_up.flower_url}/tasks")
        task = page.locator(f"a[href='/task/{job_id}']")
        expect(task).to_be_visible(timeout=30_000)
        expect(page.locator("body")).to_contain_text("SUCCESS")
        assert screenshot(page, "flower-tasks").stat().st_size > 0
