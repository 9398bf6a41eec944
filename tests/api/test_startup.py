"""The API process on its own: a start that cannot serve ends with an error, never a hang."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from shared import migrate
from tests.conftest import own_redis

ONE_DATABASE = True  # the database only has to be there
EXIT_WAIT_S = 60
STARTUP_FAILURE = 3  # uvicorn's exit code when the server cannot start


def test_an_api_whose_port_is_taken_exits_instead_of_hanging(
    database_url: str, tmp_path: Path
) -> None:
    migrate.upgrade(database_url)
    with own_redis(tmp_path / "redis") as redis_server, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "KILN_DATABASE_URL": database_url,
            "KILN_REDIS_URL": redis_server.url,
            "KILN_DATA_DIR": str(tmp_path / "data"),
            "KILN_LLM_PROVIDER": "template",
        }
        argv = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
        api = subprocess.Popen(
            [*argv, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = api.communicate(timeout=EXIT_WAIT_S)
        finally:
            if api.poll() is None:
                api.kill()  # the hang this test is about
                api.wait()

    assert api.returncode == STARTUP_FAILURE, output
    assert "address already in use" in output
    assert "Application shutdown complete" in output
