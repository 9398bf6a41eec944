"""The `kiln` commands as a user runs them: real processes, checked from the outside."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from shared.embedded_redis import free_port
from tests.conftest import own_redis
from tests.fakes.ollama import FakeOllama
from tests.harness import cmdline, eventually, wait_ready

KILN = [sys.executable, "-m", "shared.cli"]


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def _marked_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], str]:
    """An environment for a `kiln` command, with a marker every descendant inherits."""
    marker = uuid.uuid4().hex
    env = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    env.update(KILN_DATA_DIR=str(tmp_path / "data"), KILN_TEST_MARKER=marker, **extra)
    return env, marker


@contextmanager
def _up_env(tmp_path: Path, flower_port: int, **extra: str) -> Iterator[tuple[dict[str, str], str]]:
    """`_marked_env` for `kiln up`: a Redis of the test's own, the template provider, Flower."""
    with own_redis(tmp_path / "redis") as redis_server:
        yield _marked_env(
            tmp_path,
            KILN_REDIS_URL=redis_server.url,
            KILN_LLM_PROVIDER="template",
            KILN_FLOWER_PORT=str(flower_port),
            **extra,
        )


def _processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries the marker."""
    found = []
    needle = f"KILN_TEST_MARKER={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_gone(marker: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_demo_runs_a_job_on_the_template_provider_and_leaves_nothing(tmp_path: Path) -> None:
    env, marker = _marked_env(tmp_path, KILN_OLLAMA_URL="http://127.0.0.1:9")

    done = _run([*KILN, "demo", "--prompt", "ping pong"], env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Provider: template" in done.stdout
    assert "Kiln template reply: ping pong" in done.stdout
    assert "Succeeded" in done.stdout
    assert _wait_gone(marker, timeout=5) == []
    assert not (tmp_path / "data").exists()  # the demo kept to its throwaway directory


def test_demo_uses_ollama_when_it_answers(tmp_path: Path) -> None:
    with FakeOllama(models=["llama3.2:1b"]) as fake:
        env, marker = _marked_env(tmp_path, KILN_OLLAMA_URL=fake.url)
        done = _run([*KILN, "demo", "--prompt", "sky"], env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Provider: Ollama at {fake.url}, model llama3.2:1b" in done.stdout
    assert "Echo: sky" in done.stdout
    assert _wait_gone(marker, timeout=5) == []


def test_up_serves_until_ctrl_c_then_stops_every_process(tmp_path: Path) -> None:
    port, flower_port = free_port(), free_port()
    auth = {"KILN_FLOWER_BASIC_AUTH": "ops:secret-words"}
    with _up_env(tmp_path, flower_port, **auth) as (env, marker):
        up = subprocess.Popen(
            [*KILN, "up", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            key = (tmp_path / "data" / "admin.key").read_text().strip()
            job = httpx.post(
                f"http://127.0.0.1:{port}/v1/jobs",
                json={"kind": "generate", "input": {"prompt": "up"}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert job.status_code == 202
            flower = f"http://127.0.0.1:{flower_port}/"
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert httpx.get(flower).status_code == 401
                    assert httpx.get(flower, auth=("ops", "secret-words")).status_code == 200
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "Flower did not start"
                    time.sleep(0.2)
            assert len(_processes_with(marker)) >= 6  # api, 3 workers (+ pools), reconciler, flower

            up.send_signal(signal.SIGINT)
            output, _ = up.communicate(timeout=20)
        finally:
            if up.poll() is None:
                up.kill()

    assert up.returncode == 0, output
    assert f"Kiln API      http://127.0.0.1:{port}" in output
    assert "admin.key" in output
    assert "KILN_CALLBACK_ALLOW_PRIVATE=true" in output
    assert _wait_gone(marker, timeout=5) == []


def test_a_killed_up_leaves_no_kiln_service_running(tmp_path: Path) -> None:
    port = free_port()
    with _up_env(tmp_path, free_port()) as (env, marker):
        up = subprocess.Popen(
            [*KILN, "up", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            # up, fork server, api, 3 workers, reconciler, Flower (exec'd by the fork server)
            flower = eventually(
                lambda: [pid for pid in _processes_with(marker) if b"flower" in cmdline(pid)],
                "Flower",
            )
            assert len(_processes_with(marker)) >= 7

            up.kill()  # no chance to stop its services
            up.wait()
            left = _wait_gone(marker, timeout=30)
        finally:
            if up.poll() is None:
                up.kill()
            for pid in _processes_with(marker):
                os.kill(pid, signal.SIGKILL)  # this test's own processes, should one be left

    assert left == []
    assert flower


def _own_network() -> list[str]:
    """A command prefix that runs a command with a loopback of its own, where nothing answers
    on Redis's port; skips the test where the machine does not allow it (it needs root)."""
    prefix = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    if shutil.which("unshare") is None or _run([*prefix, "true"], dict(os.environ)).returncode:
        pytest.skip("cannot give a command a network of its own here (unshare --net)")
    return prefix


def test_up_says_why_it_cannot_start_its_embedded_redis_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    # No Redis answers in the command's own network, so `kiln up` starts the embedded one,
    # whose directory this test holds as another running Kiln would.
    prefix = _own_network()
    env, marker = _marked_env(tmp_path, KILN_LLM_PROVIDER="template")
    redis_dir = tmp_path / "data" / "redis"
    redis_dir.mkdir(parents=True)
    with (redis_dir / "redis.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = _run([*prefix, *KILN, "up", "--no-flower"], env)

    assert done.returncode != 0
    assert (
        f"Kiln cannot start: another running Kiln uses the embedded Redis in {redis_dir}"
        in done.stderr
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert _wait_gone(marker, timeout=5) == []


def test_keys_and_migrate_commands(tmp_path: Path) -> None:
    env, _ = _marked_env(tmp_path, KILN_DATABASE_URL=f"sqlite:///{tmp_path / 'keys.db'}")

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return _run([*KILN, *args], env)

    assert "database is up to date" in kiln("migrate").stdout
    created = kiln("keys", "create", "--name", "ci-bot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("kiln_")
    key_id = created.stderr.split("id:")[1].split()[0]
    listed = kiln("keys", "list").stdout
    assert f"{key_id}\t{key[:9]}…\tuser\tactive\tci-bot" in listed
    assert key not in listed
    assert kiln("keys", "revoke", key_id).returncode == 0
    assert f"{key_id}\t{key[:9]}…\tuser\trevoked\tci-bot" in kiln("keys", "list").stdout
    assert kiln("keys", "revoke", "key_nope").returncode == 1
    secret = kiln("keys", "secret", key_id).stdout.strip()
    assert secret.startswith("whsec_")
    assert kiln("keys", "secret", key_id).stdout.strip() == secret
    rotated = kiln("keys", "secret", key_id, "--rotate").stdout.strip()
    assert rotated.startswith("whsec_")
    assert rotated != secret


def test_the_command_line_loads_no_database_or_queue_library_before_a_command_needs_it() -> None:
    # `kiln jobs …` and the other HTTP commands start about a second sooner without them.
    code = "import sys, shared.cli.main; print(sorted(set(sys.modules) & set(sys.argv[1:])))"
    heavy = ["sqlalchemy", "sqlmodel", "redis", "celery", "psycopg", "fastapi"]
    loaded = subprocess.run(
        [sys.executable, "-c", code, *heavy], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
