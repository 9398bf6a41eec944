"""The fork server that starts a stack's services: children that behave as if started with
exec (own session, own output, exit codes), and a stack that goes on without it."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli.forkserver import ForkServer, ForkServerGone
from tests.harness import Kiln, eventually

ONE_DATABASE = True  # nothing here reaches the database beyond what every stack does
KILN = [sys.executable, "-m", "shared.cli"]
WAIT_S = 60


@pytest.fixture
def server() -> Iterator[ForkServer]:
    started = ForkServer({**os.environ, "KILN_FORKSERVER_TEST": "inherited"})
    yield started
    started.stop()


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_child_runs_its_module_with_its_own_output_and_exit_code(
    server: ForkServer, tmp_path: Path
) -> None:
    log = tmp_path / "child.log"
    child = server.spawn([*KILN, "no-such-command"], log)

    assert child.wait(timeout=WAIT_S) == 2  # typer's usage error, as `python -m shared.cli`
    assert child.poll() == 2
    assert "No such command 'no-such-command'" in log.read_text()


def test_a_child_leads_its_own_session_and_a_kill_is_reported(
    server: ForkServer, tmp_path: Path
) -> None:
    log = tmp_path / "sleeper.log"
    setup = "import os, time; print(os.environ['KILN_FORKSERVER_TEST'], flush=True)"
    argv = [sys.executable, "-m", "timeit", "-n", "1", "-r", "1", "-s", setup, "time.sleep(60)"]
    child = server.spawn(argv, log)
    printed = eventually(
        lambda: log.read_text() if log.exists() else None, "the child's first line", WAIT_S
    )
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.5)

    assert printed == "inherited\n"  # the server's environment, handed down
    assert os.getsid(child.pid) == child.pid
    assert os.getpgid(child.pid) == child.pid
    os.killpg(child.pid, signal.SIGKILL)

    assert child.wait(timeout=WAIT_S) == -signal.SIGKILL


def test_only_module_command_lines_are_forked(server: ForkServer) -> None:
    with pytest.raises(ValueError, match="not a Python module"):
        server.spawn(["/bin/true"], None)


def test_a_command_line_with_an_environment_of_its_own_is_execd_by_the_server(
    server: ForkServer, tmp_path: Path
) -> None:
    log = tmp_path / "shell.log"
    env = {"PATH": os.environ["PATH"], "OWN": "own"}
    script = 'echo "$OWN/${KILN_FORKSERVER_TEST:-none}"; exit 7'
    child = server.spawn_exec(["/bin/sh", "-c", script], log, env)

    assert child.wait(timeout=WAIT_S) == 7
    assert log.read_text() == "own/none\n"  # its own environment, not the server's


def test_a_stopped_server_refuses_to_fork(tmp_path: Path) -> None:
    server = ForkServer(dict(os.environ))
    server.stop()

    assert not server.running
    with pytest.raises(ForkServerGone):
        server.spawn([*KILN, "--help"], tmp_path / "help.log")


def test_a_stack_forks_its_services_and_goes_on_with_exec_without_the_server(kiln: Kiln) -> None:
    stack = kiln.stack
    assert stack.forkserver is not None
    server_pid = stack.forkserver.pid
    parents = {name: _parent(service.pid or 0) for name, service in stack.services.items()}
    assert parents == dict.fromkeys(
        ("api", "worker-gpu", "worker-io", "worker-callbacks", "reconciler"), server_pid
    )

    os.kill(server_pid, signal.SIGKILL)  # a process this test's stack started
    with kiln.held("worker-gpu"):
        pass

    assert _parent(stack.services["worker-gpu"].pid or 0) == os.getpid()
    key = kiln.new_key()
    job = kiln.submit(key, "after the fork server")
    assert kiln.wait_for(key, job["id"])["status"] == "succeeded"
