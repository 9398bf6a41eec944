"""The embedded Redis server: one server per data directory, even after its owner was killed."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from shared.embedded_redis import EmbeddedRedis
from tests.harness import cmdline

ONE_DATABASE = True  # no database here
OWNER = """
import sys, time
from pathlib import Path
from shared.embedded_redis import EmbeddedRedis
print(EmbeddedRedis(Path(sys.argv[1])).start(), flush=True)
time.sleep(600)
"""


def test_a_server_left_by_a_killed_owner_is_replaced_and_its_data_kept(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    left_url = owner.stdout.readline().strip()
    redis.Redis.from_url(left_url).set("kept", "yes")
    left_pid = int((directory / "redis.pid").read_text())
    owner.kill()  # no chance to stop its server
    owner.wait()

    server = EmbeddedRedis(directory)
    try:
        client = redis.Redis.from_url(server.start())

        assert not _running(left_pid)
        assert client.get("kept") == b"yes"  # read back from the append-only file
    finally:
        server.stop()
        if _running(left_pid):
            os.kill(left_pid, signal.SIGKILL)


def test_a_directory_whose_owner_lives_is_refused_and_its_server_left_alone(
    tmp_path: Path,
) -> None:
    first = EmbeddedRedis(tmp_path / "redis")
    url = first.start()
    try:
        with pytest.raises(RuntimeError, match="another running Kiln uses the embedded Redis"):
            EmbeddedRedis(tmp_path / "redis").start()

        assert redis.Redis.from_url(url).ping()
    finally:
        first.stop()

    again = EmbeddedRedis(tmp_path / "redis")  # stopped: the directory is free again
    again.start()
    again.stop()


def _running(pid: int) -> bool:
    return b"redis-server" in cmdline(pid)
