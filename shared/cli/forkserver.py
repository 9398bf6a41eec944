"""Starts a stack's Python services by forking one process that has already imported Kiln.

Every service of a stack (API, workers, reconciler) imports the same heavy libraries, two to
four seconds of CPU each. The fork server imports them once, with the stack's environment, and
forks a child per service; a child is a new session running `python -m <module> <args>`, so
signals, process groups and exit codes behave as for a process started with exec. A restarted
service is up in a fraction of a second. A service that needs an environment of its own (Flower)
is a child of the server too, which execs its command line.

The server is the parent of every child: it reaps them and reports their exit codes to the
supervisor over a socket, one line per event. When that socket closes while children still run
(the supervisor was killed), it sends them SIGTERM, so no service outlives its supervisor.
"""

import contextlib
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# What every service loads anyway; imported before the first fork, never used here.
PRELOAD = ("shared.cli.main", "workers.app", "celery.apps.worker", "api.main", "uvicorn.main")
REAP_EVERY_S = 0.1  # how soon an exit is reported
SPAWN_TIMEOUT_S = 30.0


class ForkServerGone(RuntimeError):
    """The fork server exited; its services are started with exec from now on."""


class ForkedProcess:
    """A service forked by the server: the part of `subprocess.Popen` the supervisor uses."""

    def __init__(self, pid: int, server: "ForkServer") -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._server = server

    def poll(self) -> int | None:
        return self._server.returncode(self)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._server.changed:
            while (code := self.poll()) is None:
                left = REAP_EVERY_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
                # Woken by the server's report, or polling once the server is gone.
                self._server.changed.wait(min(left, REAP_EVERY_S))
        return code


class ForkServer:
    """The supervisor's end: starts the server, asks it for children, learns of their exits."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        self._socket = ours
        self._lines = ours.makefile("r", encoding="utf-8")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli.forkserver", str(theirs.fileno())],
            env=env,
            pass_fds=[theirs.fileno()],
            start_new_session=True,  # Ctrl-C reaches the supervisor only
        )
        theirs.close()
        self.changed = threading.Condition()
        self._exits: dict[int, int] = {}
        self._started: int | None = None  # the answer to the spawn under way
        self._gone = False
        self._asking = threading.Lock()  # one spawn at a time: its answer is the next "started"
        self._reader = threading.Thread(target=self._read, name="kiln-forkserver", daemon=True)
        self._reader.start()

    def spawn(self, argv: list[str], log_path: Path | None) -> ForkedProcess:
        """Run `argv`, which is `[sys.executable, "-m", module, *args]`, in a forked child."""
        if argv[:2] != [sys.executable, "-m"]:
            raise ValueError(f"not a Python module's command line: {argv}")
        return self._ask({"module": argv[2:], "log": None if log_path is None else str(log_path)})

    def spawn_exec(
        self, argv: list[str], log_path: Path | None, env: dict[str, str]
    ) -> ForkedProcess:
        """Exec `argv` with `env` in a child of the server."""
        log = None if log_path is None else str(log_path)
        return self._ask({"exec": argv, "env": env, "log": log})

    def _ask(self, request: dict[str, Any]) -> ForkedProcess:
        with self._asking:
            try:
                self._socket.sendall(json.dumps(request).encode() + b"\n")
            except OSError as exc:
                raise ForkServerGone(str(exc)) from exc
            with self.changed:
                self.changed.wait_for(
                    lambda: self._started is not None or self._gone, SPAWN_TIMEOUT_S
                )
                pid, self._started = self._started, None
            if pid is None:
                raise ForkServerGone("the fork server did not answer")
            return ForkedProcess(pid, self)

    def returncode(self, process: ForkedProcess) -> int | None:
        with self.changed:
            if process.returncode is None:
                if process.pid in self._exits:
                    process.returncode = self._exits.pop(process.pid)
                elif self._gone and not _alive(process.pid):
                    process.returncode = -signal.SIGKILL  # reaped elsewhere: the code is lost
            return process.returncode

    def stop(self) -> None:
        """End the server (its children are stopped by the supervisor first)."""
        with contextlib.suppress(OSError):  # already gone
            self._socket.shutdown(socket.SHUT_RDWR)  # the server reads the end of its input
        self._socket.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)

    @property
    def running(self) -> bool:
        return not self._gone

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read(self) -> None:
        try:
            for line in self._lines:
                event, pid, *code = line.split()
                with self.changed:
                    if event == "started":
                        self._started = int(pid)
                    else:
                        self._exits[int(pid)] = int(code[0])
                    self.changed.notify_all()
        except (OSError, ValueError):
            pass  # a broken channel ends the server's use like its exit does
        with self.changed:
            self._gone = True
            self.changed.notify_all()


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie no longer does: its new parent may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def serve(control: socket.socket) -> None:
    """The server's loop: fork a child per request, report starts and exits, end on EOF."""
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    lines = control.makefile("r", encoding="utf-8")
    children: set[int] = set()
    while True:
        ready = selector.select(REAP_EVERY_S)
        _report_exits(control, children)
        if not ready:
            continue
        # One request at a time (the supervisor waits for each answer), so nothing is left
        # in the reader's buffer after a line.
        line = lines.readline()
        if not line:
            _end(children)
            return
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            selector.close()
            lines.close()
            control.close()
            _become_service(request)
            return  # the module returned without exiting: a clean exit, code 0
        children.add(pid)
        control.sendall(f"started {pid}\n".encode())


def _report_exits(control: socket.socket, children: set[int]) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            control.sendall(f"exited {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def _end(children: set[int]) -> None:
    """The supervisor is gone (its own stop leaves nothing running): end what it left behind,
    as its stop would have, so that no service outlives a killed `kiln up`."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


def _become_service(request: dict[str, Any]) -> None:
    """In the child: a session of its own, its output in its log, then `python -m` its module
    (which ends the process with the module's exit code) or the exec of its command line."""
    os.setsid()
    if (log := request["log"]) is not None:
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
    if (argv := request.get("exec")) is not None:
        os.execve(argv[0], argv, request["env"])  # noqa: S606  (the stack's own command line)
    module, *args = request["module"]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    for name in PRELOAD:
        __import__(name)
    serve(control)


if __name__ == "__main__":
    main()
